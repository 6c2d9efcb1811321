"""The vision encoders CREPA knows by name (the guide's two DINOv2 models) and where their weights are.

Light on purpose (no torch, no transformers): the config schema reads it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Encoder:
    hub_id: str
    patch_size: int
    width: int  # feature channels (hidden_size)
    image_size: int  # the size the guide uses it at


ENCODERS = {
    "dinov2_vitg14": Encoder("facebook/dinov2-giant", 14, 1536, 518),
    "dinov2_vits14": Encoder("facebook/dinov2-small", 14, 384, 224),
}


def encoder_source(name: str) -> str:
    """What `Dinov2Model.from_pretrained` is given: the hub id of a known name, else the name itself."""
    return ENCODERS[name].hub_id if name in ENCODERS else name
