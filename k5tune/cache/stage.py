"""The whole caching stage as one call: scan the datasets, write the report, encode what is missing.

Used by `k5tune cache` (which stops here) and by `k5tune train` (which goes on to train).
"""

from __future__ import annotations

import torch

from k5tune.atomic import atomic_write_json
from k5tune.cache.builder import build_caches, report_path
from k5tune.cache.result import CacheResult, CacheStage
from k5tune.config.frames import SPATIAL_MULTIPLE
from k5tune.config.validation import negative_prompt, validation_prompts
from k5tune.models.kandinsky5 import Kandinsky5Components, resolve_model_source
from k5tune.progress import Progress, SilentProgress
from k5tune.runtime import Runtime


def _scan_progress(progress: Progress):
    """Adapt the scanner's (done, total, message) callback to a progress bar."""
    state = {"started": False}

    def report(done: int, total: int, message: str) -> None:
        if not state["started"]:
            progress.start("scanning clips", total)
            state["started"] = True
        progress.advance(1)
        if done >= total:
            progress.end()

    return report


def _without_unusable(records: list, cache: CacheResult, report, progress: Progress) -> list:
    """Clips the VAE encoded to NaN/inf are reported (dataset report, log) and not trained on."""
    from k5tune.data.report import SkipReason
    from k5tune.errors import DatasetError

    if not cache.unusable:
        return records
    dropped = {r.key for r in cache.unusable}
    for record in cache.unusable:
        report.add_skip(record.path, SkipReason.NONFINITE_LATENTS, "NaN/inf in the encoded latents", record.backend_id)
        progress.log(f"warning: {record.path}: the VAE encoded it to NaN/inf values; it is left out")
    report.used -= len(cache.unusable)
    for summary in report.backends:
        summary.used -= sum(r.backend_id == summary.id for r in cache.unusable)
    kept = [r for r in records if r.key not in dropped]
    if not kept:
        raise DatasetError("every clip was encoded to NaN/inf values by the VAE; nothing to train on "
                           "(see the dataset report)")
    return kept


def _note_long_captions(records: list, components, max_tokens: int, report, progress: Progress) -> None:
    from k5tune.cache.text import long_captions

    long = long_captions(records, components, max_tokens)
    if not long:
        return
    listed = ", ".join(f"{r.path.name} ({n})" for r, n in long[:10]) + (" ..." if len(long) > 10 else "")
    note = (f"{len(long)} clip(s) have a caption longer than caption_max_tokens ({max_tokens} Qwen tokens): it is "
            f"cut there, as inference cuts it: {listed}")
    report.notes.append(note)
    report.long_captions = [{"path": str(r.path), "tokens": n} for r, n in long]
    progress.log(f"note: {note}")


def _note_tiling(records: list, backends, multiple: int, report) -> None:
    """Under NABLA, buckets are multiples of `multiple` px: name the clips whose bucket (so resize and
    crop) differs from the one they would have had."""
    from k5tune.data.buckets import make_bucket

    if multiple == SPATIAL_MULTIPLE:
        return
    by_id = {b.id: b for b in backends}
    changed = []
    for r in records:
        backend = by_id[r.backend_id]
        usual = make_bucket(r.width, r.height, r.bucket.frames, backend.resolution, backend.resolution_type)
        if usual != r.bucket:
            changed.append(f"{r.path.name} ({usual.name} -> {r.bucket.name})")
    report.notes.append(f"NABLA attention: buckets are multiples of {multiple} px, so its 8x8-patch blocks tile; "
                        f"{len(changed)} clip(s) are resized or cropped to another bucket than they would be "
                        "otherwise" + (f": {', '.join(changed[:20])}" + (" ..." if len(changed) > 20 else "")
                                       if changed else ""))


def _note_crepa(cfg, cache: CacheResult, report, progress: Progress) -> None:
    """What CREPA's teacher features cost on disk, per clip (dataset report, log)."""
    phase = cache.features
    note = (f"CREPA teacher features ({cfg.crepa_encoder} at {cfg.crepa_encoder_image_size} px, {phase.width} "
            f"channels, pooling {cfg.crepa_feature_pooling}, fp16): {phase.bytes_per_clip / 2**20:.2f} MiB per clip "
            f"on disk beside the latents; {phase.encoded} clip(s) encoded in {phase.seconds:.1f} s"
            + (f", GPU peak {phase.peak_gib:.2f} GiB" if phase.peak_gib is not None else ""))
    report.notes.append(note)
    progress.log(f"note: {note}")


def _hold_out(records: list, backends, cfg, report) -> tuple[list, list]:
    """(training clips, eval clips): eval backends' clips and a seeded share of the others."""
    from k5tune.data.holdout import held_out
    from k5tune.errors import DatasetError

    train, evaluated = held_out(records, {b.id for b in backends if b.eval}, cfg.eval_holdout_fraction, cfg.seed)
    if evaluated:
        report.notes.append(f"{len(evaluated)} clip(s) held out for the eval loss (never trained on): "
                            + ", ".join(r.path.name for r in evaluated[:10]) + (" ..." if len(evaluated) > 10 else ""))
    if not train:
        raise DatasetError("every clip is held out for evaluation: nothing is left to train on (eval: true on every "
                           "backend, or eval_holdout_fraction too high)")
    return train, evaluated


def run_cache_stage(loaded, runtime: Runtime, progress: Progress | None = None, dist=None,
                    spatial_multiple: int = SPATIAL_MULTIPLE) -> CacheStage:
    """`spatial_multiple`: what bucket sides are multiples of (128 under NABLA attention, train/attention.py)."""
    from k5tune.data.scan import scan_backends

    progress = progress or SilentProgress()
    cfg = loaded.train
    records, report = scan_backends(loaded.media_backends, cfg.frame_rate, progress=_scan_progress(progress),
                                    spatial_multiple=spatial_multiple)
    _note_tiling(records, loaded.media_backends, spatial_multiple, report)
    path = report_path(loaded.text_embeds_backend, loaded.media_backends)
    report_json = report.write_json(path) if dist is None or dist.is_main else path
    progress.log(report.format())
    components = Kandinsky5Components(
        resolve_model_source(cfg.model_flavour, cfg.pretrained_model_name_or_path, cfg.revision)
    )
    prompts = [] if cfg.disable_validation else validation_prompts(cfg)
    extra = [*prompts, negative_prompt(cfg)] if prompts else []
    cache = build_caches(cfg, loaded.media_backends, loaded.text_embeds_backend, records, components, runtime,
                         extra_prompts=extra, progress=progress, dist=dist)
    records = _without_unusable(records, cache, report, progress)
    if cache.features is not None:
        _note_crepa(cfg, cache, report, progress)
    _note_long_captions(records, components, cfg.caption_max_tokens, report, progress)
    records, eval_records = _hold_out(records, loaded.media_backends, cfg, report)
    if dist is None or dist.is_main:  # the report also says what caching cost (this process's GPU)
        atomic_write_json(path, {**report.to_dict(), "caching": cache.memory_summary()})
    if runtime.is_cuda:  # from here on, peaks (metrics.csv's peak_gib) are training's own
        torch.cuda.reset_peak_memory_stats(runtime.device)
    return CacheStage(records=records, report=report, report_json=report_json, cache=cache, components=components,
                      eval_records=eval_records)
