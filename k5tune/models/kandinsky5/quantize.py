"""`base_model_precision`: weight-only int8 / fp8 quantisation (torchao) of the frozen transformer base.

Which layers: every linear inside the transformer blocks — the attention projections (q, k, v, out of
self- and cross-attention), the feed-forward pair and the block's modulation layer. Those are over
99% of the weights. The modulation layers are kept in fp32 by diffusers (`_keep_in_fp32_modules`),
so they are a fifth of the weight bytes in bf16 training (Pro: 8.8 of 40.4 GiB) and int8 cuts them 4x;
they are quantised too: their error enters like that of any other block linear (a relative error of
the shift/scale/gate of one channel), their bias is kept exact, and under bf16 autocast their matrix
multiply runs in bf16 anyway. Kept as they are: the embeddings (time, text, pooled text, visual patch)
and the final out layer with its modulation — the model's first and last layers, which weight
quantisation usually leaves alone (errors there are not averaged by the residual stream), and
together under 1% of the weights.

Weight-only: each weight is stored as int8 (or float8 e4m3) with one fp32 scale per output row and is
dequantised to the compute dtype inside the matrix multiply; activations and the LoRA stay as they
are. Quantise before `add_lora`: peft then wraps the quantised linears as `TorchaoLoraLinear`
(quantising after also works: only the wrapped base layers are picked, never the LoRA A/B).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from k5tune.errors import ConfigError

KEY = "base_model_precision"
PRECISIONS = ("no_change", "int8", "fp8")
TORCHAO_SPEC = "torchao>=0.16,<0.20"  # 0.16: peft 0.21's minimum; Int8Tensor/Float8Tensor (config version 2)
_MIN_FP8_CAPABILITY = (8, 9)  # float8 e4m3 on Ada / Hopper and newer

# Block-relative names of the quantised linears; `.base_layer` when peft wraps them already.
_BLOCK_LINEAR = re.compile(
    r"^((self|cross)_attention\.(to_query|to_key|to_value|out_layer)"
    r"|feed_forward\.(in_layer|out_layer)"
    r"|(text|visual)_modulation\.out_layer)(\.base_layer)?$"
)


@dataclass(frozen=True)
class QuantReport:
    """What `quantize_base` did: how many linears and their weight bytes before and after."""

    precision: str
    linears: int
    bytes_before: int
    bytes_after: int

    def summary(self) -> str:
        return (f"{KEY}={self.precision}: {self.linears} transformer-block linears quantised (weight-only), "
                f"their weights {_size(self.bytes_before)} -> {_size(self.bytes_after)}")


def _size(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.2f} MiB"


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor really holds: a torchao tensor counts its inner int8/fp8 data and scales."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None:
        names, _ = flatten()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def parameter_bytes(module: nn.Module) -> int:
    return sum(tensor_bytes(p) for p in module.parameters())


def is_quantized(tensor: torch.Tensor) -> bool:
    """A torchao tensor? Without importing torchao (slow, noisy): none exists before it is imported."""
    torchao_utils = sys.modules.get("torchao.utils")
    return torchao_utils is not None and isinstance(tensor, torchao_utils.TorchAOBaseTensor)


def _is_base_linear(module: nn.Module, name: str) -> bool:
    """torchao filter: a block linear named by `_BLOCK_LINEAR` (relative to its block), not yet quantised."""
    return (isinstance(module, nn.Linear) and _BLOCK_LINEAR.match(name) is not None
            and not is_quantized(module.weight))


def _torchao_config(precision: str):
    """torchao's config for `precision`, or a ConfigError that says how to install torchao."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        installed = version("torchao")
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig
    except (ImportError, PackageNotFoundError) as exc:
        raise ConfigError(f"{precision} needs torchao, which is not installed: pip install 'k5tune[quant]' "
                          f"(or pip install '{TORCHAO_SPEC}'), or set it to no_change", key=KEY) from exc
    if Version(installed).release < (0, 16):
        raise ConfigError(f"{precision} needs {TORCHAO_SPEC}, found torchao {installed}: "
                          f"pip install '{TORCHAO_SPEC}'", key=KEY)
    # version=2: the Int8Tensor / Float8Tensor weights (0.16-0.17 default int8 to the old layout);
    # set_inductor_config=False: torchao must not retune the inductor settings of our compiled kernels
    if precision == "int8":
        return Int8WeightOnlyConfig(version=2, set_inductor_config=False)
    return Float8WeightOnlyConfig(version=2, set_inductor_config=False)


def check_precision_device(precision: str, device: torch.device | str) -> None:
    """fp8 weights need a GPU of compute capability 8.9+ (Ada, Hopper); the CPU takes both (tests)."""
    device = torch.device(device)
    if precision != "fp8" or device.type != "cuda":
        return
    capability = torch.cuda.get_device_capability(device)
    if capability < _MIN_FP8_CAPABILITY:
        raise ConfigError(
            f"fp8 needs a GPU with compute capability 8.9 or newer (Ada, Hopper); "
            f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}: use int8", key=KEY)


def _blocks(transformer) -> list[nn.Module]:
    return [*transformer.text_transformer_blocks, *transformer.visual_transformer_blocks]


def base_linears(block: nn.Module) -> list[nn.Linear]:
    """The linears of one transformer block that `quantize_base` quantises (not yet quantised ones).
    Works on the meta device too: `k5tune estimate` counts the quantised bytes with it."""
    return [m for name, m in block.named_modules() if _is_base_linear(m, name)]


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def quantize_base(
    transformer,
    precision: str,
    device: torch.device | str | None = None,
    *,
    offload: bool = False,
    sharded: bool = False,
    log: Callable[[str], None] | None = None,
) -> QuantReport | None:
    """Quantise the frozen block linears of `transformer` in place; None for `no_change`.

    `device` is where training computes: each block is quantised there, one at a time, so a model
    loaded on the CPU never has all of its bf16 blocks on the GPU. The transformer ends on `device`,
    except with `offload` (group offload), where the quantised blocks go back to where they were.
    `sharded` (FSDP2) is refused: FSDP2 cannot split torchao's weights (no `aten.split` for them).
    Idempotent: linears already quantised are left alone.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}", key=KEY)
    if precision == "no_change":
        return None
    if sharded:
        raise ConfigError(f"{precision} cannot be combined with fsdp_enable over several processes yet (FSDP2 "
                          "cannot shard torchao's quantised weights): use one or the other", key=KEY)
    config = _torchao_config(precision)
    from torchao.quantization import quantize_

    target = torch.device(device) if device is not None else _device_of(transformer)
    check_precision_device(precision, target)
    count = before = after = 0
    for block in _blocks(transformer):
        home = _device_of(block)
        block.to(target)
        chosen = base_linears(block)
        before += sum(tensor_bytes(m.weight) for m in chosen)
        quantize_(block, config, filter_fn=_is_base_linear)
        after += sum(tensor_bytes(m.weight) for m in chosen)
        count += len(chosen)
        if offload:
            block.to(home)
    if not offload:
        transformer.to(target)
    report = QuantReport(precision, count, before, after)
    if log is not None:
        log(report.summary())
    return report
