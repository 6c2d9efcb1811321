"""GET /api/presets?config=&gpu_gib=: the memory presets of `k5tune configure` for the config's flavour and
a card (the GPU nvidia-smi reports, the smallest of several, unless gpu_gib names one), the recommended
one, and the keys a preset decides (those it does not set go back to their defaults). The same presets
and the same recommender as the wizard: k5tune.estimate.search's."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from k5tune.server import system
from k5tune.server.context import DEFAULT_CONFIG, Ctx

router = APIRouter()


def _card_gib() -> float | None:
    totals = [g["memory_total_mib"] for g in system.gpus()["gpus"] if g["memory_total_mib"]]
    return min(totals) / 1024 if totals else None


@router.get("/presets")
async def presets(ctx: Ctx, config: str = DEFAULT_CONFIG, gpu_gib: float | None = None) -> dict:
    from k5tune.estimate.search import PRESET_KEYS, card_presets
    from k5tune.models.flavours import DEFAULT_FLAVOUR, FLAVOURS

    values = ctx.config_values(config)
    flavour = values.get("model_flavour") if values.get("model_flavour") in FLAVOURS else DEFAULT_FLAVOUR
    processes = values.get("num_processes") if isinstance(values.get("num_processes"), int) else 1
    total = gpu_gib if gpu_gib is not None else await run_in_threadpool(_card_gib)
    offered, recommended = card_presets(flavour, total or 0.0, processes)
    return {"flavour": flavour, "gpu_gib": total, "recommended": recommended if total else None,
            "keys": list(PRESET_KEYS),
            "presets": [{"name": p.name, "title": p.title, "note": p.note, "settings": p.settings} for p in offered]}
