"""Where the modulation layers' weights live (`modulation_precision`).

diffusers keeps every modulation layer of the Kandinsky 5 transformer in fp32 (`_keep_in_fp32_modules`):
they turn the time embedding into the shift/scale/gate of each block. On Pro that is 2.2 B parameters,
8.8 GiB in fp32, a fifth of the weights. But a training step runs under bf16 autocast, which casts
the weight of every linear layer to bf16 before the product: the fp32 copies are rounded to bf16 at
every use. Stored in bf16 they give the training step bit for bit (tests/test_modulation.py) at half
the memory (Pro: 4.4 GiB less). Outside autocast (the validation previews) the layer still computes
in fp32, from the stored weights upcast; that is exact when the checkpoint itself holds them in bf16,
and otherwise differs from the fp32 weights by bf16 rounding.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


def modulation_layers(transformer: nn.Module) -> list[nn.Linear]:
    """The Linear of every Kandinsky5Modulation (blocks' text/visual modulation, final layer's)."""
    from diffusers.models.transformers.transformer_kandinsky import Kandinsky5Modulation

    return [m.out_layer for m in transformer.modules() if isinstance(m, Kandinsky5Modulation)]


def _upcast_linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    bias = None if self.bias is None else self.bias.float()
    return F.linear(x.float(), self.weight.float(), bias)


def store_modulation_in(transformer: nn.Module, dtype: torch.dtype) -> int:
    """Store the modulation weights in `dtype`, computing in fp32 as before; returns the bytes saved."""
    saved = 0
    for layer in modulation_layers(transformer):
        for p in layer.parameters():
            if p.dtype != dtype:
                saved += p.numel() * (p.element_size() - torch.empty((), dtype=dtype).element_size())
                p.data = p.data.to(dtype)
        layer.forward = types.MethodType(_upcast_linear_forward, layer)
    return saved


def modulation_storage_dtype(setting: str, compute_dtype: torch.dtype) -> torch.dtype | None:
    """The dtype to store the modulation in for training, or None to leave diffusers' fp32.

    `auto`: the compute dtype when training runs under bf16/fp16 autocast, which rounds these weights
    to it for every product anyway (the training step is bit-identical); `fp32`: as diffusers."""
    if setting == "fp32" or compute_dtype == torch.float32:
        return None
    return compute_dtype
