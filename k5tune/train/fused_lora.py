"""A faster forward for peft's LoRA Linear layers during training (one adapter, no dropout).

peft casts the layer input to the LoRA weights' dtype (fp32 in training) and back, then multiplies
and adds: at 24,576 tokens each is a full pass over a 88-176 MB tensor, several per layer. Here the
LoRA path runs in the compute dtype and its product is accumulated straight into the base output
by the matrix multiply (`addmm_` with alpha = scaling): no casts of activations, no separate scale or
add. The maths is peft's: base(x) + scaling * B(A(x)); anything else (dropout, several or merged
adapters, extra arguments) falls back to peft's own forward.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from k5tune.models.kandinsky5.quantize import is_quantized


def _dense(weight: torch.Tensor) -> torch.Tensor:
    """A torchao-quantised base weight (base_model_precision) dequantised to its compute dtype: the
    weight is small next to video activations, while torchao's int8 linear would rescale the output
    and add the bias in two more passes over it (and the product is then accumulated into as usual)."""
    return weight.dequantize() if is_quantized(weight) else weight


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    adapters = [a for a in self.active_adapters if a in self.lora_A]
    if (args or kwargs or self.disable_adapters or self.merged or len(adapters) != 1
            or not isinstance(self.lora_dropout[adapters[0]], torch.nn.Identity) or adapters[0] in self.lora_variant):
        return self._k5_peft_forward(x, *args, **kwargs)
    name = adapters[0]
    base = self.base_layer
    out = F.linear(x, _dense(base.weight), base.bias)
    low_rank = F.linear(x, self.lora_A[name].weight.to(out.dtype))
    flat, up = out.view(-1, out.shape[-1]), self.lora_B[name].weight.to(out.dtype).t()
    if torch.compiler.is_compiling():  # the same product, out of place: compiled graphs are functional
        return torch.addmm(flat, low_rank.view(-1, low_rank.shape[-1]), up, alpha=self.scaling[name]).view_as(out)
    flat.addmm_(low_rank.view(-1, low_rank.shape[-1]), up, alpha=self.scaling[name])
    return out


def enable_fused_lora(model) -> int:
    """Patch every peft LoRA Linear of `model`; returns how many. Idempotent."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    patched = 0
    for module in model.modules():
        if isinstance(module, LoraLinear) and not hasattr(module, "_k5_peft_forward"):
            module._k5_peft_forward = module.forward
            module.forward = types.MethodType(_fused_forward, module)
            patched += 1
    return patched
