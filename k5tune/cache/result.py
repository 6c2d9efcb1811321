"""What the cache stage hands the training loop: where every clip's latents and every caption's embedding
are, and what caching cost. Reading it needs no encoder and no video decoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from k5tune.cache.store import TensorStore

EMPTY_CAPTION = ""  # cached for caption dropout and as the fallback negative prompt


@dataclass
class CacheResult:
    """What the training loop needs to find every cached tensor."""

    latent_keys: dict[str, str]  # record.key -> latent entry key
    latent_stores: dict[str, TensorStore]  # backend id -> store
    text_keys: dict[str, str]  # caption -> text entry key
    text_store: TensorStore
    encoded_latents: int = 0
    encoded_captions: int = 0
    seconds: float = 0.0
    extra_prompts: list[str] = field(default_factory=list)
    # GPU peak memory (GiB) of each phase that encoded something; None without a GPU or work
    text_peak_gib: float | None = None
    latent_peak_gib: float | None = None
    text_encoder_streamed: bool = False
    # clips whose latents came out NaN/inf: not stored, not trained on (the stage reports them)
    unusable: list = field(default_factory=list)
    features: object | None = None  # CREPA's teacher features (cache/crepa.py FeaturePhase), when enabled

    @property
    def peak_gib(self) -> float | None:
        """The caching peak: the larger of the two phases (each starts from a reset counter)."""
        peaks = [p for p in (self.text_peak_gib, self.latent_peak_gib) if p is not None]
        return max(peaks) if peaks else None

    def memory_summary(self) -> dict:
        """What the dataset report records about this caching run."""
        return {"peak_gib": self.peak_gib, "text_peak_gib": self.text_peak_gib,
                "latent_peak_gib": self.latent_peak_gib, "text_encoder_streamed": self.text_encoder_streamed,
                "encoded_latents": self.encoded_latents, "encoded_captions": self.encoded_captions,
                "seconds": round(self.seconds, 2), **({"crepa": self.crepa_summary()} if self.features else {})}

    def crepa_summary(self) -> dict:
        """What CREPA's features cost: disk per clip, and (when some were encoded) time and GPU peak."""
        phase = self.features
        return {"encoded": phase.encoded, "seconds": round(phase.seconds, 2), "peak_gib": phase.peak_gib,
                "width": phase.width, "mib_per_clip": round(phase.bytes_per_clip / 2**20, 3)}

    def size_bytes(self) -> int:
        stores = {id(s): s for s in [*self.latent_stores.values(), self.text_store]}
        return sum(s.size_bytes() for s in stores.values())

    def latents(self, record_key: str, backend_id: str) -> torch.Tensor:
        return self.sample(record_key, backend_id)["latents"]

    def sample(self, record_key: str, backend_id: str, crepa: bool = False) -> dict[str, torch.Tensor]:
        """All cached tensors of a clip: `latents`, `first_frame` for I2V flavours, and with `crepa` its
        teacher features (`crepa`: latent frames x tokens x channels)."""
        sample = self.latent_stores[backend_id].get(self.latent_keys[record_key])
        if crepa:
            sample["crepa"] = self.latent_stores[backend_id].get(self.features.keys[record_key])["features"]
        return sample

    def discard(self, record_key: str, backend_id: str) -> None:
        """Delete a clip's entries (found unusable): the next cache stage encodes them again."""
        store = self.latent_stores[backend_id]
        store.path(self.latent_keys[record_key]).unlink(missing_ok=True)
        if self.features is not None:
            store.path(self.features.keys[record_key]).unlink(missing_ok=True)

    def prompt(self, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        entry = self.text_store.get(self.text_keys[caption])
        return entry["qwen"], entry["clip"]


@dataclass
class CacheStage:
    records: list
    report: object  # k5tune.data.DatasetReport
    report_json: Path
    cache: CacheResult
    components: object  # k5tune.models.kandinsky5.Kandinsky5Components (loads on demand)
    eval_records: list = field(default_factory=list)  # held out for the eval loss, cached, never trained on

    def summary(self) -> str:
        lines = [
            f"cache: {self.cache.encoded_latents} clip(s) and {self.cache.encoded_captions} caption(s) encoded, "
            f"the rest reused; {self.cache.size_bytes() / 2**20:.1f} MiB on disk; {self.cache.seconds:.1f} s"
        ]
        peak = memory_line(self.cache)
        if peak:
            lines.append(peak)
        lines.append(f"dataset report: {self.report_json}")
        return "\n".join(lines)


def memory_line(cache: CacheResult) -> str | None:
    """'caching peak X GiB ...' when a GPU did the encoding; None otherwise."""
    if cache.peak_gib is None:
        return None
    parts = []
    if cache.text_peak_gib is not None:
        how = "Qwen2.5-VL streamed from CPU memory" if cache.text_encoder_streamed else "text encoders on the GPU"
        parts.append(f"text embeddings {cache.text_peak_gib:.2f} GiB, {how}")
    if cache.latent_peak_gib is not None:
        parts.append(f"video latents {cache.latent_peak_gib:.2f} GiB")
    return f"caching peak {cache.peak_gib:.2f} GiB of GPU memory ({'; '.join(parts)})"
