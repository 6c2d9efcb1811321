"""What `train --dry-run` adds to the resolved settings: the choices training derives from them."""

from __future__ import annotations

from typing import Any

from k5tune.train import objective


def scheduler_shift(loaded) -> tuple[float | None, str]:
    """The shift training uses and where it came from (the model's scheduler config is read without
    loading any weights; None when it cannot be read now, e.g. offline without a local copy)."""
    cfg = loaded.train
    if cfg.flow_schedule_shift is not None:
        return cfg.flow_schedule_shift, "flow_schedule_shift"
    from k5tune.models.source import resolve_model_source

    try:
        source = resolve_model_source(cfg.model_flavour, cfg.pretrained_model_name_or_path, cfg.revision)
        config = source.config_file("scheduler", "scheduler_config.json")
        return float(config.get("shift", 1.0)), "the model's scheduler config"
    except Exception as exc:  # noqa: BLE001 - any loading problem: say so, the dry run goes on
        return None, f"the model's scheduler config (not readable now: {str(exc).splitlines()[0][:120]})"


def noise_levels(loaded) -> dict[str, Any]:
    cfg = loaded.train
    shift, source = scheduler_shift(loaded)
    summary: dict[str, Any] = {"sampling": cfg.flow_sigma_sampling,
                               "meaning": objective.SIGMA_SAMPLING[cfg.flow_sigma_sampling],
                               "shift": shift, "shift_from": source}
    if shift is not None:
        summary["quantiles"] = objective.sigma_distribution(shift, cfg.flow_sigma_sampling, cfg.flow_logit_mean,
                                                            cfg.flow_logit_std, cfg.flow_mode_scale)
        steps = cfg.validation_num_inference_steps
        summary[f"sampler_share_below_0.3 ({steps} steps)"] = round(
            objective.sampler_share_below(0.3, steps, shift), 4)
    return summary


def training_summary(loaded) -> dict[str, Any]:
    from k5tune.train.attention import resolve_for_model
    from k5tune.train.crepa import describe_crepa

    summary = {"attention": resolve_for_model(loaded.train).describe(), "training_noise_levels": noise_levels(loaded)}
    if loaded.train.crepa_enabled:
        summary["crepa"] = describe_crepa(loaded.train)
    return summary
