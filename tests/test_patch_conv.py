"""`vae_enable_patch_conv`: sliced 3D convolutions give the plain results, on single layers and the tiny VAE."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from k5tune.models.kandinsky5.patch_conv import disable_patch_conv, enable_patch_conv


@pytest.fixture
def conv3d_calls(monkeypatch) -> list[tuple[int, ...]]:
    """Input shapes of every F.conv3d call (nn.Conv3d and the sliced path both end there)."""
    calls: list[tuple[int, ...]] = []
    real = torch.nn.functional.conv3d

    def counting(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv3d", counting)
    return calls


@pytest.mark.parametrize(
    "options",
    [
        {"kernel_size": 3},
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": (3, 3, 3), "stride": (1, 2, 2)},
        {"kernel_size": 3, "stride": 2, "padding": (0, 1, 1)},
        {"kernel_size": (1, 3, 1), "padding": (1, 2, 0), "dilation": (1, 2, 1)},
        {"kernel_size": 1},
        {"kernel_size": 3, "padding": 1, "groups": 2, "bias": False},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_sliced_conv3d_equals_the_plain_one(options, conv3d_calls):
    torch.manual_seed(0)
    conv = nn.Conv3d(4, 6, **options)
    x = torch.randn(1, 4, 5, 23, 17)
    expected = conv(x)
    assert len(conv3d_calls) == 1

    assert enable_patch_conv(conv, max_elements=x.numel() // 5) == 1
    conv3d_calls.clear()
    out = conv(x)
    assert len(conv3d_calls) >= 2  # really sliced ...
    assert max(shape[3] for shape in conv3d_calls) < x.shape[3] + 2 * conv.padding[1]  # ... along the height
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [{"padding": 1, "padding_mode": "replicate"}, {"padding": "same"}])
def test_convolutions_that_cannot_be_sliced_run_whole(options):
    torch.manual_seed(0)
    conv = nn.Conv3d(2, 3, 3, **options)
    x = torch.randn(1, 2, 4, 12, 10)
    expected = conv(x)
    enable_patch_conv(conv, max_elements=16)
    torch.testing.assert_close(conv(x), expected, atol=0, rtol=0)


def test_tiny_vae_encodes_and_decodes_the_same_with_sliced_convolutions(tiny_model_dir, conv3d_calls):
    from diffusers import AutoencoderKLHunyuanVideo

    vae = AutoencoderKLHunyuanVideo.from_pretrained(tiny_model_dir, subfolder="vae").eval()
    pixels = torch.rand(1, 3, 17, 48, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mode()
        decoded = vae.decode(latents).sample
        plain_calls = len(conv3d_calls)

        patched = enable_patch_conv(vae, max_elements=2**15)
        assert patched == sum(isinstance(m, nn.Conv3d) for m in vae.modules()) > 10
        assert enable_patch_conv(vae, max_elements=2**15) == 0  # idempotent
        conv3d_calls.clear()
        sliced_latents = vae.encode(pixels).latent_dist.mode()
        sliced_decoded = vae.decode(sliced_latents).sample
        assert len(conv3d_calls) > plain_calls  # the big convolutions ran in slices

        disable_patch_conv(vae)
        conv3d_calls.clear()
        vae.encode(pixels)
    assert not any(hasattr(m, "_k5_plain_forward") for m in vae.modules())

    scale = latents.abs().max()
    # bf16 tolerance would be ~1e-2 of the latent scale; on CPU fp32 slicing is exact up to summation order
    torch.testing.assert_close(sliced_latents, latents, atol=1e-5 * scale, rtol=0)
    torch.testing.assert_close(sliced_decoded, decoded, atol=1e-4, rtol=0)
