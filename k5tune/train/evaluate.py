"""The eval loss: the LoRA's flow-matching loss on held-out clips, the same measurement every time.

Each held-out clip is evaluated at a fixed grid of noise levels, (k + 0.5) / K for k < K
(`eval_noise_levels`), with noise drawn from a generator keyed by (eval_seed, clip, level): nothing
depends on what training drew, so two evaluations differ only because the LoRA changed. The clip's
first caption is used, never dropped. It runs from the caches, without gradients, in eval mode (dense
where TREAD routes in training; NABLA where inference uses it), with the memory plan training uses.

Reported overall and per band of noise: low (sigma < 1/3: detail), mid, high (sigma >= 2/3: layout).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from k5tune.models.kandinsky5.model_input import pad_prompts
from k5tune.runtime import Runtime
from k5tune.train import objective
from k5tune.train.step import prediction_loss

BANDS = {"low": (0.0, 1 / 3), "mid": (1 / 3, 2 / 3), "high": (2 / 3, 1.0)}
COLUMNS = ["eval_loss", *(f"eval_loss_{band}" for band in BANDS)]


def eval_levels(count: int) -> torch.Tensor:
    return (torch.arange(count, dtype=torch.float32) + 0.5) / count


def _noise(seed: int, key: str, level: int, shape: torch.Size) -> torch.Tensor:
    digest = hashlib.sha256(f"{seed}:eval:{key}:{level}".encode()).digest()
    return torch.randn(shape, generator=torch.Generator().manual_seed(int.from_bytes(digest[:8], "little")))


@dataclass
class Evaluator:
    records: list  # the held-out clips
    cache: object  # CacheResult
    levels: torch.Tensor
    seed: int

    @torch.no_grad()
    def losses(self, transformer, runtime: Runtime, shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
        """(clips, levels) losses of this process's share (`shard` = (rank, world); other rows are 0)."""
        was_training = transformer.training
        transformer.eval()
        table = torch.zeros(len(self.records), len(self.levels), dtype=torch.float64)
        try:
            for row, record in enumerate(self.records):
                if row % shard[1] == shard[0]:
                    table[row] = self._clip_losses(transformer, runtime, record)
        finally:
            transformer.train(was_training)
        return table

    def by_dataset(self, table: torch.Tensor) -> dict[str, float]:
        """The eval loss of each eval dataset (backend id) in `table`."""
        ids = sorted({r.backend_id for r in self.records})
        return {i: table[[r.backend_id == i for r in self.records]].mean().item() for i in ids}

    def _clip_losses(self, transformer, runtime: Runtime, record) -> torch.Tensor:
        sample = self.cache.sample(record.key, record.backend_id)
        latent = sample["latents"].float()
        qwen, clip = self.cache.prompt(record.captions[0])
        text = pad_prompts([qwen], [clip])
        first = sample["first_frame"].float()[None] if "first_frame" in sample else None
        pixel_size = (record.bucket.height, record.bucket.width)
        out = torch.zeros(len(self.levels), dtype=torch.float64)
        for index, sigma in enumerate(self.levels):
            noise = _noise(self.seed, record.key, index, latent.shape)
            noisy = objective.add_noise(latent[None], noise[None], sigma.view(1))
            loss = prediction_loss(transformer, noisy, objective.velocity_target(latent, noise)[None], text,
                                   sigma.view(1), pixel_size, runtime, first)
            out[index] = loss.double().cpu()
        return out


def summarize(table: torch.Tensor, levels: torch.Tensor) -> dict[str, float]:
    """The eval loss overall and per band of noise (means over clips and the band's levels)."""
    row = {"eval_loss": table.mean().item()}
    for band, (low, high) in BANDS.items():
        inside = (levels >= low) & (levels < high) if band != "high" else levels >= low
        row[f"eval_loss_{band}"] = table[:, inside].mean().item() if inside.any() else float("nan")
    return row


def best_step(rows: list[dict]) -> tuple[int, float] | None:
    """(step, eval loss) of the lowest eval loss in metrics rows, or None without any."""
    evaluated = [(int(r["step"]), r["eval_loss"]) for r in rows if r.get("eval_loss") not in (None, "")]
    return min(evaluated, key=lambda item: item[1]) if evaluated else None
