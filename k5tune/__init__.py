"""k5tune: LoRA training for the Kandinsky 5.0 Video models."""

__version__ = "0.1.0"
