"""GET /api/presets?config=&gpu_gib=: the memory presets of `k5tune configure` for the config's flavour and
a card (the GPU nvidia-smi reports, the smallest of several, unless gpu_gib names one), the recommended
one, and the keys a preset decides (those it does not set go back to their defaults). The same presets
and the same recommender as the wizard: k5tune.estimate.presets', at the config's shape and attention
(its dataset file's video clips) and within what this machine's CPU memory can pin, with each preset's
predicted peak and pinned CPU memory there."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from k5tune.hostmem import host_memory
from k5tune.server import system
from k5tune.server.context import DEFAULT_CONFIG, Ctx, read_json_file
from k5tune.server.paths import PathRefused

router = APIRouter()


def _card_gib() -> float | None:
    totals = [g["memory_total_mib"] for g in system.gpus()["gpus"] if g["memory_total_mib"]]
    return min(totals) / 1024 if totals else None


@router.get("/presets")
async def presets(ctx: Ctx, config: str = DEFAULT_CONFIG, gpu_gib: float | None = None) -> dict:
    total = gpu_gib if gpu_gib is not None else await run_in_threadpool(_card_gib)
    return await run_in_threadpool(_presets, ctx, config, total)  # (the estimate imports torch once)


def _presets(ctx, config: str, total: float | None) -> dict:
    from k5tune.estimate.presets import PRESET_KEYS, choose_preset, preset_peak_gib, preset_pinned_gib
    from k5tune.estimate.shape import shape_and_plan_from_values
    from k5tune.models.flavours import DEFAULT_FLAVOUR, FLAVOURS

    values = ctx.config_values(config)
    flavour = values.get("model_flavour") if values.get("model_flavour") in FLAVOURS else DEFAULT_FLAVOUR
    processes = values.get("num_processes") if isinstance(values.get("num_processes"), int) else 1
    try:  # the dataset file's clips give the shape (one outside the project or unreadable: none)
        datasets, _, _ = read_json_file(ctx.paths.resolve(ctx.dataset_path(config, None)))
    except PathRefused:
        datasets = None
    shape, user = (shape_and_plan_from_values(values, datasets) if isinstance(datasets, list) else None) or (None, None)
    host = host_memory()  # (the server trains on this machine: its CPU memory bounds what offloading pins)
    choice = (choose_preset(flavour, total, processes, shape, user, host.pinnable_gib if host else None) if total
              else choose_preset(flavour, 0.0, processes))  # (no card: the presets alone, nothing recommended)

    def predicted(preset) -> float | None:
        peak = None if shape is None else preset_peak_gib(flavour, preset, shape, user)
        return None if peak is None else round(peak, 1)

    def named(s) -> str | None:
        return None if s is None else f"{s.height}x{s.width}x{s.frames}"

    return {"flavour": flavour, "gpu_gib": total, "recommended": choice.recommended if total else None,
            "shape": named(shape), "fits_shape": named(choice.fits_shape) if total else None,
            "keys": list(PRESET_KEYS),
            "pinnable_gib": None if host is None else round(host.pinnable_gib, 1),
            "cpu_bound": choice.cpu_bound,
            "presets": [{"name": p.name, "title": p.title, "note": p.note, "settings": p.settings,
                         "predicted_gib": predicted(p),
                         "pinned_gib": round(preset_pinned_gib(flavour, p, shape, user) * processes, 1),
                         "held_back": p.name in choice.held_back}
                        for p in choice.presets]}
