"""Where things run and in which dtypes: decided once, here, and passed around."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    compute_dtype: torch.dtype  # transformer compute (autocast / weights of the frozen base)
    vae_dtype: torch.dtype
    text_dtype: torch.dtype

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @classmethod
    def detect(cls, mixed_precision: str = "bf16", device: str | None = None) -> Runtime:
        """GPU if there is one: bf16 (or fp16) compute there; the CPU always computes in fp32."""
        chosen = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if chosen.type == "cpu" or mixed_precision == "no":
            return cls(chosen, torch.float32, torch.float32, torch.float32)
        half = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
        return cls(chosen, half, half, half)

    def empty_cache(self) -> None:
        if self.is_cuda:
            torch.cuda.empty_cache()

    def reset_peak_memory(self) -> None:
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory_gib(self) -> float | None:
        if not self.is_cuda:
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**30
