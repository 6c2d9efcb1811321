"""Everything that knows Kandinsky 5: component loading, prompt encoding, video latents, model input."""

from k5tune.models.kandinsky5.components import Kandinsky5Components, ModelSource, resolve_model_source

__all__ = ["Kandinsky5Components", "ModelSource", "resolve_model_source"]
