"""On-disk caches of VAE latents and text embeddings (content-addressed, atomic, reused)."""

from k5tune.cache.store import TensorStore, content_key

__all__ = ["TensorStore", "content_key"]
