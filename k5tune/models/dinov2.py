"""DINOv2 through transformers, as CREPA's frozen teacher: loading (hub id or local folder, offline
rules as for the other components) and the patch features of frames at the transformer's token grid.

Only the cache stage runs it; the training loop reads what it wrote.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from k5tune.errors import K5TuneError
from k5tune.models.vision_encoders import encoder_source

# torchvision's ImageNet normalisation, which DINOv2 was trained with
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
# the released models' configurations, for `k5tune bench --crepa` (random weights of the real size)
RANDOM_CONFIGS = {
    "dinov2_vitg14": {"hidden_size": 1536, "num_hidden_layers": 40, "num_attention_heads": 24, "mlp_ratio": 4,
                      "use_swiglu_ffn": True, "patch_size": 14, "image_size": 518},
    "dinov2_vits14": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "mlp_ratio": 4,
                      "patch_size": 14, "image_size": 518},
}
FRAMES_PER_BATCH = 8  # frames through the encoder at once (bounds the caching peak)


class EncoderLoadError(K5TuneError):
    """The CREPA encoder's weights cannot be found or read."""


def load_dinov2(name: str, device: torch.device | str, dtype: torch.dtype):
    """`Dinov2Model.from_pretrained` of a known name's hub id, another hub id or a local folder; frozen."""
    import transformers
    from transformers import Dinov2Model

    transformers.utils.logging.disable_progress_bar()
    source = encoder_source(name)
    try:
        model = Dinov2Model.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise EncoderLoadError(
            f"cannot load the CREPA encoder '{name}' ({source}): {str(exc).splitlines()[0].rstrip('.')}. Offline, the hub "
            f"id must be in the Hugging Face cache (download it once: `hf download {source}`), or set "
            "crepa_encoder to a local folder holding a Dinov2Model (config.json + weights)") from exc
    return model.to(device).eval().requires_grad_(False)


def frame_indices(frames: int, latent_frames: int) -> list[int]:
    """The pixel frame of each latent frame: evenly spaced from the first to the last (for 4k+1 frames,
    frame 4t: latent frame t's last frame, and frame 0 for the first)."""
    if latent_frames == 1:
        return [0]
    return [round(t * (frames - 1) / (latent_frames - 1)) for t in range(latent_frames)]


def pool_grid(x: torch.Tensor, pooling: int) -> torch.Tensor:
    """Average (..., H, W, C) over pooling x pooling squares (the last ones partial): (..., H', W', C)."""
    if pooling == 1:
        return x
    *lead, height, width, channels = x.shape
    grid = x.reshape(-1, height, width, channels).permute(0, 3, 1, 2)
    size = (-(-height // pooling), -(-width // pooling))
    pooled = F.adaptive_avg_pool2d(grid, size)
    return pooled.permute(0, 2, 3, 1).reshape(*lead, *size, channels)


@torch.no_grad()
def teacher_features(model, pixels: torch.Tensor, image_size: int, grid: tuple[int, int],
                     pooling: int = 1) -> torch.Tensor:
    """Patch features of `pixels` (F, 3, H, W in [-1, 1]): each frame resized to image_size squared,
    DINOv2's last hidden state without the class token, resampled (bilinear) to the token `grid`
    (H/16, W/16), averaged over pooling squares and L2-normalised per token. (F, tokens, C) fp16."""
    parameter = next(model.parameters())
    mean = torch.tensor(_MEAN, device=parameter.device).view(1, 3, 1, 1)
    std = torch.tensor(_STD, device=parameter.device).view(1, 3, 1, 1)
    patch = model.config.patch_size
    side = image_size // patch
    out = []
    for chunk in pixels.split(FRAMES_PER_BATCH):
        x = (chunk.to(parameter.device, torch.float32) + 1) / 2
        x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", antialias=True, align_corners=False)
        x = ((x.clamp(0, 1) - mean) / std).to(parameter.dtype)
        hidden = model(pixel_values=x).last_hidden_state[:, 1:]  # (n, side*side, C) after the class token
        maps = hidden.float().transpose(1, 2).reshape(len(chunk), -1, side, side)
        maps = F.interpolate(maps, size=grid, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        features = F.normalize(pool_grid(maps, pooling), dim=-1)
        out.append(features.flatten(1, 2).to(torch.float16).cpu())
    return torch.cat(out)
