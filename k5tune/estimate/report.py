"""`k5tune estimate`'s report: your config's peak, the candidates' table, caching, and what fits."""

from __future__ import annotations

from k5tune.estimate.caching import caching_advice, caching_estimate
from k5tune.estimate.presets import choose_preset
from k5tune.estimate.search import candidate_settings, config_advice, propose
from k5tune.estimate.shape import TrainingShape, estimate_problem
from k5tune.estimate.training import pinned_cpu_gib, training_peak_gib
from k5tune.train.plan import TrainingPlan


def _proposal_lines(flavour: str, shape: TrainingShape, gpu_gib: float, processes: int,
                    current: TrainingPlan | None) -> list[str]:
    # the same rule over the named presets at this shape, as the wizard and the web UI apply it (they also
    # hold back presets that pin more CPU memory than their machine spares: --gpu-memory may name another)
    choice = choose_preset(flavour, gpu_gib, processes, shape, current)
    preset = f"  memory preset for this card (k5tune configure, web UI): {choice.recommended}"
    if choice.fits_shape is not None and choice.fits_shape is not shape:
        preset += f" (fits {choice.fits_shape.height}x{choice.fits_shape.width}, {choice.fits_shape.frames} frames)"
    proposal = propose(flavour, shape, gpu_gib, processes=processes, user=current)
    if proposal is None:
        return [f"nothing modelled fits {gpu_gib} GiB; use several GPUs or a smaller model", preset]
    chosen, settings, peak = proposal
    lines = [f"fits {gpu_gib} GiB: {settings.label()} at {chosen.height}x{chosen.width}, {chosen.frames} frames "
             f"-> {peak:.1f} GiB", f"  {config_advice(settings, current)}"]
    if chosen is not shape:
        lines.append(f"  dataset: a smaller clip, resolution {chosen.height} ({chosen.height}x{chosen.width}), "
                     f"video.num_frames {chosen.frames}")
    pinned = pinned_cpu_gib(flavour, chosen, settings)
    if pinned:
        lines.append(f"  needs {pinned * processes:.1f} GiB of pinned CPU memory"
                     + (f" ({pinned:.1f} GiB in each of {processes} processes)" if processes > 1 else ""))
        alternative = propose(flavour, shape, gpu_gib, processes=processes, smaller=False,
                              max_pinned_gib=0, user=current)
        if alternative is not None:
            lines.append(f"  without pinned CPU memory: {alternative.settings.label()} -> {alternative.peak_gib:.1f} GiB; "
                         f"{config_advice(alternative.settings, current)}")
    return [*lines, preset]


def _table_lines(flavour: str, shape: TrainingShape, processes: int, current: TrainingPlan | None) -> list[str]:
    options = candidate_settings(processes, current)
    current = current.effective() if current is not None else None
    if current is not None and current not in options and estimate_problem(current) is None:
        options = [current, *options]
    lines = ["training peak per GPU and pinned CPU memory per process (GiB), fastest first (* your config):",
             "     GPU  pinned CPU  setting"]
    for settings in options:
        pinned = pinned_cpu_gib(flavour, shape, settings)
        mark = "*" if settings == current else " "
        lines.append(f"  {mark}{training_peak_gib(flavour, shape, settings):5.1f}  "
                     f"{f'{pinned:9.1f}' if pinned else '        -'}   {settings.label()}")
    return lines


def estimate_report(flavour: str, shape: TrainingShape, gpu_gib: float | None, offload_during_startup: bool,
                    patch_conv: bool, tiling: bool = False, current: TrainingPlan | None = None,
                    processes: int = 1) -> str:
    lines = [f"k5tune estimate — {flavour}, {shape.height}x{shape.width}, {shape.frames} frames "
             f"({shape.tokens} tokens), batch {shape.batch}, LoRA rank {shape.rank} on {' '.join(shape.targets)}"
             + (f", {processes} processes" if processes > 1 else ""), ""]
    if current is not None:
        problem = estimate_problem(current)
        peak = "not estimated: " + problem if problem else f"{training_peak_gib(flavour, shape, current):.1f} GiB"
        lines += [f"your config: {current.label()} -> training peak {peak}", ""]
    lines += _table_lines(flavour, shape, processes, current)
    cache = caching_estimate(shape, offload_during_startup, patch_conv, tiling, gpu_gib)
    text_how = ("Qwen2.5-VL streamed from CPU memory a layer at a time" if cache.streamed
                else "Qwen2.5-VL whole on the GPU")
    vae_how = {"plain": "plain VAE", "patch_conv": "vae_enable_patch_conv", "tiling": "vae_enable_tiling"}[cache.variant]
    together = "" if offload_during_startup else ", text encoders still on the GPU"
    lines += ["", f"caching peak (GiB): {cache.peak_gib:.1f}, the larger of",
              f"  {cache.text_gib:6.1f}  text embeddings ({text_how}; a batch of 8 of the longest captions)",
              f"  {cache.vae_gib:6.1f}  video latents ({vae_how}{together})"]
    if gpu_gib:
        lines.append("")
        lines += _proposal_lines(flavour, shape, gpu_gib, processes, current)
        lines += caching_advice(shape, gpu_gib, offload_during_startup, patch_conv, tiling)
    return "\n".join(lines)

