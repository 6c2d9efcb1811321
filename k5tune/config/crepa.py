"""CREPA's vision encoders and the checks of the crepa_* keys that need more than a type.

`crepa_encoder` names a DINOv2 model: one of the guide's two names (mapped to their hub ids), another
hub id (owner/name), or a local folder holding a transformers `Dinov2Model` (config.json + weights).
Light on purpose (no torch, no transformers): the schema imports it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from k5tune.models.vision_encoders import ENCODERS, encoder_source  # noqa: F401 (re-exported)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def local_encoder_config(name: str) -> dict | None:
    """A local folder's config.json (None for names and hub ids)."""
    path = Path(name).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def encoder_problem(name: str) -> str | None:
    """Why `name` cannot be a CREPA encoder, or None."""
    known = ", ".join(f"{k} ({v.hub_id})" for k, v in ENCODERS.items())
    if name in ENCODERS:
        return None
    if Path(name).expanduser().is_dir():
        config = local_encoder_config(name)
        if config is None or config.get("model_type") != "dinov2":
            return (f"the folder '{name}' holds no DINOv2 model (config.json with model_type dinov2 and its "
                    f"weights); valid: {known}, a hub id (owner/name) or such a folder")
        return None
    if _HUB_ID.match(name) and not Path(name).expanduser().parent.is_dir():
        return None
    return f"unknown encoder '{name}'; valid: {known}, a DINOv2 hub id (owner/name) or a local folder holding one"


def encoder_patch_size(name: str) -> int | None:
    """The encoder's patch size where it is known without a download (names, local folders)."""
    if name in ENCODERS:
        return ENCODERS[name].patch_size
    config = local_encoder_config(name)
    return int(config.get("patch_size", 14)) if config else None


def image_size_problem(size: int, name: str) -> str | None:
    """`size` must be a whole number of the encoder's patches."""
    patch = encoder_patch_size(name)
    if patch is None or size % patch == 0:
        return None
    lower, upper = max(patch, size // patch * patch), (size // patch + 1) * patch
    return (f"{size} is not a multiple of the patch size {patch} of {name}; use a multiple of {patch}, e.g. "
            f"{lower} or {upper}")
