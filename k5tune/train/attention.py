"""Which attention training uses: dense, or NABLA with the checkpoint's settings, and where each value
comes from (for `train --dry-run`, the bench and the plan).

`sparse_attention: auto` follows the checkpoint's transformer config (the 10 s and Pro HD checkpoints
say nabla); `nabla` opts a regular checkpoint in (with the 10 s checkpoints' settings unless given);
`dense` switches it off. `nabla_threshold` and `nabla_window` tune it on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from k5tune.errors import ConfigError
from k5tune.models.kandinsky5.nabla import NablaSettings, nearest_tiling_sizes, parse_window, tiling_problem


@dataclass(frozen=True)
class AttentionChoice:
    nabla: NablaSettings | None
    source: str  # where the choice and its values come from

    @property
    def spatial_multiple(self) -> int:
        """What bucket and validation sides must be multiples of (NABLA's 8x8-patch blocks must tile)."""
        return 128 if self.nabla else 16

    def describe(self) -> dict[str, Any]:
        if self.nabla is None:
            return {"attention": "dense", "from": self.source}
        settings = self.nabla
        return {"attention": "nabla", "from": self.source, "threshold_P": settings.P,
                "sta_window": f"{settings.wT}x{settings.wH}x{settings.wW}", "add_sta": settings.add_sta,
                "method": settings.method, "sizes": "multiples of 128 px"}


def resolve(cfg, transformer_config: dict[str, Any] | None, where: str) -> AttentionChoice:
    """The attention for `cfg` over a model whose transformer config is `transformer_config` (None: not
    readable now, then the flavour registry's word counts), read from `where`."""
    checkpoint = NablaSettings.from_transformer_config(transformer_config or {})
    if cfg.sparse_attention == "dense":
        return AttentionChoice(None, "sparse_attention: dense")
    if cfg.sparse_attention == "auto" and checkpoint is None:
        return AttentionChoice(None, f"the checkpoint ({where}: regular attention)")
    base, source = (checkpoint, f"the checkpoint ({where})") if checkpoint else (
        NablaSettings(), "sparse_attention: nabla (the 10 s checkpoints' settings)")
    window = parse_window(cfg.nabla_window) if cfg.nabla_window else (None, None, None)
    settings = base.with_overrides(P=cfg.nabla_threshold, wT=window[0], wH=window[1], wW=window[2],
                                   add_sta=cfg.nabla_add_sta)
    tuned = [k for k in ("nabla_threshold", "nabla_window", "nabla_add_sta") if getattr(cfg, k) is not None]
    return AttentionChoice(settings, source + (f", with {', '.join(tuned)}" if tuned else ""))


def resolve_for_model(cfg) -> AttentionChoice:
    """`resolve` with the model's own transformer config, read without loading weights; the flavour
    registry stands in when the config cannot be read (offline, nothing cached)."""
    from k5tune.models.source import transformer_config_of

    return resolve(cfg, *transformer_config_of(cfg))


def check_sizes(cfg, datasets, choice: AttentionChoice) -> None:
    """Under NABLA every size must tile: validation_resolution and each dataset's pixel resolution."""
    if choice.nabla is None:
        return
    height, width = cfg.validation_size
    if not cfg.disable_validation and tiling_problem(height, width):
        raise ConfigError(f"{tiling_problem(height, width)} (NABLA attention, from {choice.source}); nearest valid "
                          f"sizes: {', '.join(nearest_tiling_sizes(height, width))}; or sparse_attention: dense",
                          key="validation_resolution")
    for backend in datasets:
        resolution = getattr(backend, "resolution", None)
        if resolution and getattr(backend, "resolution_type", "pixel") == "pixel" and resolution % 128:
            lower, upper = max(128, resolution // 128 * 128), -(-resolution // 128) * 128
            raise ConfigError(f"backend '{backend.id}': resolution {resolution} does not tile into NABLA's blocks "
                              f"(sides must be multiples of 128 px); use {lower} or {upper}, or "
                              "sparse_attention: dense", key="resolution")
