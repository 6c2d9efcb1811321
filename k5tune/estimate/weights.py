"""The transformer's weights and the LoRA's parameters, counted from the real classes (no guesses).

Weight bytes come from the real model class on the meta device: bf16 blocks, fp32 modulation as
diffusers keeps them, int8/fp8 block linears counted with the layer selection of
k5tune/models/kandinsky5/quantize.py; pinned bytes as PinnedArena places them in slabs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from k5tune.models.flavours import FLAVOURS

GIB = 2**30

# Bytes per output row beside the 1-byte elements, as torchao stores weight-only int8 / fp8 (version 2
# tensors): an fp32 scale, and for int8 an int8 zero point. Counted this way the quantised bytes equal
# those measured (run 15: Lite 2,003,065,344 int8 and 2,001,750,016 fp8; Pro 19,305,283,584 int8).
QUANTISED_ROW_BYTES = {"int8": 4 + 1, "fp8": 4}


@dataclass(frozen=True)
class WeightCount:
    """Bytes of the transformer's weights as training holds them."""

    total: int
    blocks: int  # the text and visual blocks: what group offload moves and FSDP2 shards
    blocks_pinned: int  # the same as group offload pins them: packed in slabs (offload.py)
    largest_block: int  # one visual block: the unit group offload moves and FSDP2 gathers
    largest_linear: int  # elements of the largest quantised linear (dequantised to bf16 while it computes)

    @property
    def outside_blocks(self) -> int:
        return self.total - self.blocks


def _pinned_size(nbytes: int) -> int:
    """What torch's pinned-memory allocator takes for a request: the next power of two."""
    return 1 << max(nbytes - 1, 0).bit_length()


def _arena_bytes(tensor_bytes: list[int], slab_bytes: int | None = None) -> int:
    """Pinned memory of tensors placed in order into slabs as PinnedArena places them (1 GiB slabs
    unless given); a tensor larger than a slab gets its own allocation, rounded up to a power of two."""
    from k5tune.train.activation_offload import PinnedArena, first_fit

    slab_bytes = slab_bytes or PinnedArena.SLAB_BYTES
    used: list[int] = []
    oversized = 0
    for nbytes in tensor_bytes:
        if nbytes > slab_bytes:
            oversized += _pinned_size(nbytes)
        else:
            first_fit(used, nbytes, slab_bytes, PinnedArena.ALIGN)
    return len(used) * slab_bytes + oversized


@lru_cache(maxsize=8)
def weight_count(flavour: str, precision: str = "no_change", modulation_fp32: bool = True) -> WeightCount:
    """Count the weights of the real class on the meta device, quantised as `base_model_precision` would,
    with the modulation layers in fp32 (as diffusers keeps them) or in bf16 (`modulation_precision`)."""
    import torch
    from diffusers import Kandinsky5Transformer3DModel

    from k5tune.models.kandinsky5.quantize import base_linears
    from k5tune.train.activation_offload import slab_bytes_for

    with torch.device("meta"):
        model = Kandinsky5Transformer3DModel(**FLAVOURS[flavour].transformer_config)
    keep = model._keep_in_fp32_modules
    blocks = [*model.text_transformer_blocks, *model.visual_transformer_blocks]
    quantised = [m for block in blocks for m in base_linears(block)] if precision != "no_change" else []
    quantised_weights = {id(m.weight) for m in quantised}

    def sizes(named) -> list[int]:
        counted = []
        for name, p in named:
            if id(p) in quantised_weights:
                counted.append(p.numel() + p.shape[0] * QUANTISED_ROW_BYTES[precision])
            elif "modulation.out_layer" in name and not modulation_fp32 and precision == "no_change":
                counted.append(p.numel() * 2)
            else:
                counted.append(p.numel() * (4 if any(k in name for k in keep) else 2))
        return counted

    def size(named) -> int:
        return sum(sizes(named))

    block_sizes = [n for block in blocks for n in sizes(block.named_parameters())]
    return WeightCount(
        total=size(model.named_parameters()),
        blocks=sum(block_sizes),
        blocks_pinned=_arena_bytes(block_sizes, slab_bytes_for(block_sizes)),  # as GroupOffloader places them
        largest_block=size(model.visual_transformer_blocks[0].named_parameters()),
        largest_linear=max((m.weight.numel() for m in quantised), default=0),
    )


def lora_parameter_count(config: dict, rank: int, targets: list[str]) -> int:
    d, f = config["model_dim"], config["ff_dim"]
    attention_targets = sum(t in targets for t in ("to_query", "to_key", "to_value", "out_layer"))
    feed_forward = rank * (d + f) * 2 if "feed_forward" in targets else 0
    visual = attention_targets * 2 * rank * (d + d) + feed_forward  # self- and cross-attention
    text = attention_targets * rank * 2 * d + feed_forward  # self-attention only
    return config["num_visual_blocks"] * visual + config["num_text_blocks"] * text
