"""Where things run and in which dtypes: decided once, here, and passed around."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

COMPILE_CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"


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


def keep_compiled_kernels(env: dict[str, str] | None = None) -> str | None:
    """torch.compile's cache (inductor's kernels and graphs, and NABLA's FlexAttention autotuning choices:
    2.5 minutes at Lite 10 s) in ~/.cache/k5tune/torchinductor instead of torch's default under the
    temporary folder, which a reboot or a new container empties: a shape is then compiled and autotuned
    once per machine, not once per boot. A cache the user chose ($TORCHINDUCTOR_CACHE_DIR) wins, and an
    unwritable home leaves torch's default. Returns the folder in use, None for torch's default."""
    env = os.environ if env is None else env
    if env.get(COMPILE_CACHE_VARIABLE):
        return env[COMPILE_CACHE_VARIABLE]
    try:
        folder = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "k5tune" / "torchinductor"
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # (RuntimeError: no home folder to be found)
        return None
    if not os.access(folder, os.W_OK):
        return None
    env[COMPILE_CACHE_VARIABLE] = str(folder)
    return str(folder)
