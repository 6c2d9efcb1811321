"""The LoRA adapter on the transformer (peft): which modules, its trainable weights, its state."""

from __future__ import annotations

import warnings

import torch

# Config target names -> module-name patterns. 'out_layer' means the attentions' output projections
# only: a bare "out_layer" would also match the final Kandinsky5OutLayer (not a Linear) and the
# time/text embedding layers.
_TARGET_PATTERNS = {
    "to_query": r"(self_attention|cross_attention)\.to_query",
    "to_key": r"(self_attention|cross_attention)\.to_key",
    "to_value": r"(self_attention|cross_attention)\.to_value",
    "out_layer": r"(self_attention|cross_attention)\.out_layer",
    "feed_forward": r"feed_forward\.(in_layer|out_layer)",
}


def target_regex(targets: list[str]) -> str:
    return r"^.*(" + "|".join(_TARGET_PATTERNS[t] for t in targets) + r")$"


def add_lora(transformer, rank: int, alpha: float, dropout: float, targets: list[str], seed: int) -> list[str]:
    """Freeze the base, add a LoRA adapter and return the names of the adapted modules."""
    from peft import LoraConfig

    transformer.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights=True, target_modules=target_regex(targets)
    )
    # peft draws the LoRA A matrices from the global RNG: seed it so the same seed gives the same LoRA
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        # over a torchao-quantised base (base_model_precision) peft warns that merging would need the
        # quantisation config; k5tune never merges (it trains and saves the adapter only)
        warnings.filterwarnings("ignore", message="TorchaoLoraLinear was instantiated without")
        transformer.add_adapter(config)
    return sorted({name.rsplit(".lora_", 1)[0] for name, _ in transformer.named_parameters() if ".lora_" in name})


def lora_parameters(transformer) -> list[torch.nn.Parameter]:
    return [p for name, p in transformer.named_parameters() if ".lora_" in name]


def lora_state_dict(transformer) -> dict[str, torch.Tensor]:
    """The adapter's weights with diffusers' `transformer.` key prefix."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(transformer)
    # sharded (FSDP2) weights are gathered whole: every process must call this, in the same order
    return {f"transformer.{key}": _whole(value).detach().to("cpu").contiguous() for key, value in state.items()}


def _whole(value: torch.Tensor) -> torch.Tensor:
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def load_lora_weights(transformer, state: dict[str, torch.Tensor]) -> None:
    """Put saved LoRA weights (our file layout) back into the transformer's adapter, exactly."""
    from peft.utils import set_peft_model_state_dict

    stripped = {k.removeprefix("transformer."): v for k, v in state.items()}
    result = set_peft_model_state_dict(transformer, stripped)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"checkpoint LoRA keys do not match the model: {unexpected[:3]}")
