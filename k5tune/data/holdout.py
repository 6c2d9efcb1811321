"""Which clips are held out for the eval loss (never trained on)."""

from __future__ import annotations

import hashlib


def held_out(records: list, eval_backends: set[str], fraction: float, seed: int) -> tuple[list, list]:
    """(training records, eval records): every clip of an eval backend, plus a seeded share of the others
    (by a hash of seed and clip: the same clips whatever the order or the other clips)."""
    def picked(record) -> bool:
        digest = hashlib.sha256(f"{seed}:holdout:{record.key}".encode()).digest()
        return int.from_bytes(digest[:8], "little") / 2**64 < fraction

    evaluated = [r for r in records if r.backend_id in eval_backends or (fraction and picked(r))]
    chosen = {r.key for r in evaluated}
    return [r for r in records if r.key not in chosen], evaluated
