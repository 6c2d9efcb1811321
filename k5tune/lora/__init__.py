"""LoRA: the adapter on the transformer, its key layouts, exact conversion between them, and its files."""
