"""A tiny random-weight Kandinsky 5 model, built with the real classes and saved in diffusers layout.

Used by every test, by `k5tune demo` and by offline trials. `Kandinsky5T2VPipeline.from_pretrained(dir)`
(or `Kandinsky5I2VPipeline` for `i2v=True`) loads and runs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from k5tune.models.flavours import NABLA_ATTENTION  # as the 10 s checkpoints configure it
from k5tune.models.tokenizers_offline import build_clip_tokenizer, build_qwen_tokenizer

# Where k5tune records facts about a model folder that diffusers does not save (see PROMPT_INDEX_FILE).
PROMPT_INDEX_FILE = "k5tune_prompt.json"

TINY_TEXT_DIM = 32
TINY_CLIP_DIM = 32
TINY_TRANSFORMER = {
    "in_visual_dim": 16,
    "out_visual_dim": 16,
    "in_text_dim": TINY_TEXT_DIM,
    "in_text_dim2": TINY_CLIP_DIM,
    "time_dim": 32,
    "patch_size": (1, 2, 2),
    "model_dim": 96,
    "ff_dim": 192,
    "num_text_blocks": 1,
    "num_visual_blocks": 2,
    "axes_dims": (4, 6, 6),
    "visual_cond": True,
}


def _tiny_transformer(seed: int, visual_blocks: int = TINY_TRANSFORMER["num_visual_blocks"], nabla: bool = False):
    from diffusers import Kandinsky5Transformer3DModel

    torch.manual_seed(seed)
    model = Kandinsky5Transformer3DModel(**{**TINY_TRANSFORMER, "num_visual_blocks": visual_blocks,
                                            **(NABLA_ATTENTION if nabla else {})})
    # The released classes zero-initialise every modulation layer, which gates all residual branches
    # off and would give LoRA exactly zero gradient. Random modulation makes the tiny model "live".
    generator = torch.Generator().manual_seed(seed + 1)
    for name, module in model.named_modules():
        if name.endswith("modulation.out_layer"):
            with torch.no_grad():
                module.weight.normal_(0.0, 0.2, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
    return model


def _tiny_vae(seed: int):
    """A random tiny VAE with the released scaling factor (0.476986). `k5tune probe` rescales it so the
    latents carry the clip (see k5tune/probe.py)."""
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(seed)
    return AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
        scaling_factor=0.476986,
    )


def _tiny_qwen(seed: int, vocab_size: int, hidden: int = TINY_TEXT_DIM, heads: int = 2, kv_heads: int = 1,
               layers: int = 2, intermediate: int = 64, mrope: tuple[int, int, int] = (2, 3, 3)):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    head_dim = hidden // heads
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": intermediate,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": list(mrope)},
            "bos_token_id": None,
            "eos_token_id": 0,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": hidden,
            "fullatt_block_indexes": [0],
        },
        # point the (unused) vision tokens past the text vocabulary
        image_token_id=vocab_size + 10,
        video_token_id=vocab_size + 11,
        vision_start_token_id=vocab_size + 12,
        vision_end_token_id=vocab_size + 13,
        bos_token_id=None,
        eos_token_id=0,
        pad_token_id=0,
    )
    config.text_config.bos_token_id = None
    config.text_config.eos_token_id = 0
    assert head_dim // 2 == sum(config.text_config.rope_parameters["mrope_section"])
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def _tiny_clip(seed: int, vocab_size: int, hidden: int = TINY_CLIP_DIM, heads: int = 2, layers: int = 2,
               intermediate: int = 64):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=hidden,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config).eval()


def prompt_template_start_index(tokenizer, template: str) -> int:
    """Tokens of the prompt template before the user's text: what the pipeline cuts off."""
    prefix = template.split("{}")[0]
    return len(tokenizer(prefix)["input_ids"])


def build_tiny_pipeline(i2v: bool = False, seed: int = 0, visual_blocks: int = 2, nabla: bool = False):
    """The tiny pipeline in memory (T2V or I2V), with our prompt start index set on it."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky5I2VPipeline, Kandinsky5T2VPipeline

    tokenizer = build_qwen_tokenizer()
    tokenizer_2 = build_clip_tokenizer()
    pipeline_cls = Kandinsky5I2VPipeline if i2v else Kandinsky5T2VPipeline
    pipe = pipeline_cls(
        transformer=_tiny_transformer(seed, visual_blocks, nabla),
        vae=_tiny_vae(seed + 10),
        text_encoder=_tiny_qwen(seed + 20, len(tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=_tiny_clip(seed + 30, len(tokenizer_2)),
        tokenizer_2=tokenizer_2,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
    )
    pipe.prompt_template_encode_start_idx = prompt_template_start_index(tokenizer, pipe.prompt_template)
    return pipe


def make_tiny_model(directory: str | Path, i2v: bool = False, seed: int = 0, visual_blocks: int = 2,
                    nabla: bool = False) -> Path:
    """Write the tiny model to `directory` in diffusers layout and return the path. `nabla`: its transformer
    config asks for NABLA sparse attention, as the 10 s and Pro HD checkpoints do (sizes must then be
    multiples of 128 px)."""
    directory = Path(directory)
    pipe = build_tiny_pipeline(i2v=i2v, seed=seed, visual_blocks=visual_blocks, nabla=nabla)
    pipe.save_pretrained(directory)
    # save_pretrained does not keep the pipeline's template cut; record it for our loader.
    (directory / PROMPT_INDEX_FILE).write_text(
        json.dumps({"prompt_template_encode_start_idx": pipe.prompt_template_encode_start_idx, "i2v": i2v}, indent=2)
    )
    return directory


TINY_DINOV2 = {"hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_ratio": 2, "patch_size": 14,
               "image_size": 56}


def make_tiny_dinov2(directory: str | Path, seed: int = 0) -> Path:
    """A tiny random DINOv2 (transformers' real Dinov2Model class) for CREPA: `crepa_encoder` can name the
    folder; its patch size is the real one (14), so crepa_encoder_image_size takes multiples of 14."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(**TINY_DINOV2)).save_pretrained(directory)
    return Path(directory)
