"""Everything that knows Kandinsky 5: component loading, prompt encoding, video latents, model input.

The names below load on first use, so a light module of this package (nabla's settings, model input)
can be imported without the loaders (transformers, tokenizers): `train --dry-run` reads settings only.
"""

from __future__ import annotations

__all__ = ["Kandinsky5Components", "ModelSource", "resolve_model_source"]


def __getattr__(name: str):
    if name == "Kandinsky5Components":
        from k5tune.models.kandinsky5.components import Kandinsky5Components

        return Kandinsky5Components
    if name in ("ModelSource", "resolve_model_source"):
        from k5tune.models import source

        return getattr(source, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
