"""`vae_enable_patch_conv`: run the VAE's 3D convolutions in slices to lower peak memory.

A Conv3d over a whole 61x512x768 clip needs large temporary buffers (the convolution workspace and
its output at once). Slicing the output along height, and computing each slice from the matching
input rows plus the kernel's halo, gives the same result with a fraction of the temporary memory.
We write this ourselves because diffusers offers only tiling (which blends overlapping tiles and is
not exact) for this VAE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Convolutions whose input is smaller than this run unsliced (slicing only costs time there).
DEFAULT_MAX_ELEMENTS = 2**27


def _sliced_conv3d(conv: nn.Conv3d, x: torch.Tensor, max_elements: int) -> torch.Tensor:
    # Small inputs, non-zero padding modes and string padding ('same'/'valid') run whole.
    if x.numel() <= max_elements or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return conv._k5_plain_forward(x)  # type: ignore[attr-defined]
    kernel_h = conv.kernel_size[1]
    stride_h = conv.stride[1]
    dilation_h = conv.dilation[1]
    pad_t, pad_h, pad_w = conv.padding if isinstance(conv.padding, tuple) else (conv.padding,) * 3
    if pad_h:
        # pad once up front so every slice sees the same borders as the whole tensor would
        x = F.pad(x, (pad_w, pad_w, pad_h, pad_h, pad_t, pad_t))
        pad_t = pad_w = 0
    elif pad_t or pad_w:
        x = F.pad(x, (pad_w, pad_w, 0, 0, pad_t, pad_t))
    halo = dilation_h * (kernel_h - 1)
    out_h = (x.shape[3] - halo - 1) // stride_h + 1
    slices = max(2, -(-x.numel() // max_elements))
    rows_per_slice = max(1, -(-out_h // slices))
    outputs = []
    for start in range(0, out_h, rows_per_slice):
        stop = min(out_h, start + rows_per_slice)
        chunk = x[:, :, :, start * stride_h : (stop - 1) * stride_h + halo + 1]
        outputs.append(F.conv3d(chunk, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups))
    return torch.cat(outputs, dim=3)


def enable_patch_conv(vae: nn.Module, max_elements: int = DEFAULT_MAX_ELEMENTS) -> int:
    """Make every Conv3d in `vae` run sliced; returns how many were patched. Idempotent."""
    patched = 0
    for module in vae.modules():
        if isinstance(module, nn.Conv3d) and not hasattr(module, "_k5_plain_forward"):
            module._k5_plain_forward = module.forward  # type: ignore[attr-defined]
            module.forward = lambda x, _m=module: _sliced_conv3d(_m, x, max_elements)  # type: ignore[method-assign]
            patched += 1
    return patched


def disable_patch_conv(vae: nn.Module) -> None:
    for module in vae.modules():
        if hasattr(module, "_k5_plain_forward"):
            module.forward = module._k5_plain_forward  # type: ignore[method-assign]
            del module._k5_plain_forward
