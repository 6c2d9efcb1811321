"""Profile one LoRA training step of our path on the GPU and print where the time goes.

    python benchmarks/tools/profile_step.py [--flavour F] [--checkpointing selective] [--keep-attention-blocks N]
                                      [--tread '{"routes": [...]}'] [--trace trace.json.gz]
                                      [--offload-activations] [--modulation-bf16]
                                      [--nabla-density D] [--compile-blocks | --no-compile-blocks] [--flex-tiling T]

Prints, as JSON: the step's wall time; the GPU's busy time (the union of kernel intervals) and so its
idle share; the CPU time the step takes to enqueue its work (when it is close to the wall time the
step is bound by Python and kernel launches, not by the GPU); a summary by kernel kind (attention,
matrix products, fused/element-wise, other) and the top kernels; the longest GPU idle gaps with the
CPU ops running then; device-to-device copies by the CPU op chain that launched them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from k5tune.bench import BenchConfig, OurStep, build_transformer
from k5tune.models.kandinsky5.nabla import FLEX_TILINGS, NablaSettings
from k5tune.train.plan import TrainingPlan


def kind(name: str) -> str:
    lowered = name.lower()
    if any(k in lowered for k in ("fmha", "flash", "attention", "cudnn", "sdpa", "attn")):
        return "attention"
    if any(k in lowered for k in ("gemm", "sm90_xmma", "cutlass", "matmul", "nvjet", "sgemm", "hgemm")):
        return "matmul"
    if "triton" in lowered:
        return "fused (triton)"
    if any(k in lowered for k in ("elementwise", "vectorized", "reduce", "norm", "copy", "fill", "cat")):
        return "element-wise (eager)"
    return "other"


def busy_union(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by the intervals (kernels on several streams may overlap)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def _merged(intervals: list[tuple[float, float]]) -> list[list[float]]:
    merged: list[list[float]] = []
    for start, stop in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return merged


def _chain(event, depth: int = 4) -> str:
    names = []
    while event is not None and len(names) < depth:
        names.append(event.name[:60])
        event = event.cpu_parent
    return " < ".join(names)


def idle_gaps(intervals: list[tuple[float, float]], cpu_events: list, top: int = 12, min_us: float = 300) -> list[dict]:
    """The longest stretches with no kernel running, and the CPU ops that overlap each most: where the
    GPU waited for the host (a sync, an allocation, Python)."""
    merged = _merged(intervals)
    gaps = sorted(((b[0] - a[1], a[1], b[0]) for a, b in zip(merged, merged[1:], strict=False)
                   if b[0] - a[1] >= min_us), reverse=True)[:top]
    report = []
    for length, start, stop in gaps:
        overlaps = []
        for event in cpu_events:
            overlap = min(stop, event.time_range.end) - max(start, event.time_range.start)
            if overlap > 0.3 * length and event.time_range.end - event.time_range.start < 20 * length:
                overlaps.append((overlap, _chain(event)))
        overlaps.sort(reverse=True)
        report.append({"ms": round(length / 1000, 2), "at_ms": round((start - merged[0][0]) / 1000, 1),
                       "cpu": [chain for _, chain in overlaps[:4]]})
    return report


def copies_by_caller(cpu_events: list, top: int = 10) -> list[dict]:
    """Memory copies (device to device, and to or from the host) grouped by the CPU op chain that
    launched them."""
    groups: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in cpu_events:
        for kernel in getattr(event, "kernels", []) or []:
            if kernel.name.startswith("Memcpy"):
                groups[_chain(event)][0] += kernel.duration
                groups[_chain(event)][1] += 1
    ranked = sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]
    return [{"ms": round(v[0] / 1000, 1), "calls": v[1], "caller": k} for k, v in ranked]


def enqueue_seconds(step, repeats: int = 2) -> tuple[float, float]:
    """(CPU seconds until step() returns, wall seconds until the GPU is done), medians of `repeats`."""
    cpu, wall = [], []
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        cpu.append(time.perf_counter() - started)
        torch.cuda.synchronize()
        wall.append(time.perf_counter() - started)
    return sorted(cpu)[len(cpu) // 2], sorted(wall)[len(wall) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flavour", default="t2v-lite-sft-5s")
    parser.add_argument("--checkpointing", default="selective")
    parser.add_argument("--keep-attention-blocks", type=int)
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--tread", help="TREAD routes as JSON (like tread_config): profile the routed step")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--trace", help="also write a Chrome trace (gzip) of the profiled step here")
    parser.add_argument("--offload-activations", action="store_true", help="profile with offload_activations")
    parser.add_argument("--modulation-bf16", action="store_true", help="modulation_precision auto (bf16)")
    parser.add_argument("--resolution", default="512x768")
    parser.add_argument("--frames", type=int, default=61)
    parser.add_argument("--nabla-density", type=float,
                        help="NABLA at this fixed top-of-map density plus the STA window (as k5tune bench)")
    parser.add_argument("--compile-blocks", action="store_true", help="compiled blocks (TrainingPlan.compile_blocks)")
    parser.add_argument("--no-compile-blocks", action="store_true", help="eager blocks (FlexAttention compiled alone)")
    parser.add_argument("--flex-tiling", default=TrainingPlan.flex_tiling, choices=FLEX_TILINGS,
                        help="NABLA's FlexAttention tiling (default: training's)")
    args = parser.parse_args()
    device = torch.device("cuda")
    nabla_settings = None if args.nabla_density is None else NablaSettings(fixed_density=args.nabla_density)
    plan = TrainingPlan(checkpointing=args.checkpointing, attention=args.attention,
                        keep_attention_blocks=args.keep_attention_blocks, offload_activations=args.offload_activations,
                        modulation_fp32=not args.modulation_bf16, nabla=nabla_settings,
                        compile_blocks=True if args.compile_blocks else False if args.no_compile_blocks else None,
                        flex_tiling=args.flex_tiling)
    bench = BenchConfig(flavour=args.flavour, resolution=args.resolution, frames=args.frames, plan=plan, device="cuda")
    transformer = build_transformer(bench, device)
    step = OurStep(transformer, bench, device)
    if args.tread:
        from k5tune.config.schema import TreadConfig
        from k5tune.models.kandinsky5.tread import install_tread, resolve_routes

        tread = TreadConfig.model_validate_json(args.tread)
        install_tread(transformer, resolve_routes(tread, len(transformer.visual_transformer_blocks)))
    for _ in range(args.warmup):
        step()
    cpu_s, wall_s = enqueue_seconds(step)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    totals: dict[str, float] = defaultdict(float)
    kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    intervals = []
    launches = 0
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            micros = event.device_time
            totals[kind(event.name)] += micros
            kernels[event.name][0] += micros
            kernels[event.name][1] += 1
            intervals.append((event.time_range.start, event.time_range.end))
        elif "LaunchKernel" in event.name or "cudaLaunch" in event.name:
            launches += 1
    total = sum(totals.values())
    cpu_events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    try:
        gaps, copies = idle_gaps(intervals, cpu_events), copies_by_caller(cpu_events)
    except Exception as error:  # the summary above matters more than these details
        gaps, copies = [f"failed: {error!r}"], []
    busy = busy_union(intervals) / 1e6
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:25]
    print(json.dumps({
        "flavour": args.flavour,
        "checkpointing": args.checkpointing,
        "keep_attention_blocks": args.keep_attention_blocks,
        "tread": args.tread,
        "nabla_density": args.nabla_density,
        "compile_blocks": plan.compile_blocks,
        "flex_tiling": args.flex_tiling,
        "step_wall_s": round(wall_s, 4),
        "step_cpu_enqueue_s": round(cpu_s, 4),
        "gpu_busy_s": round(busy, 4),
        "gpu_idle_share_of_wall": round(1 - busy / wall_s, 3),
        "kernel_launches": launches,
        "gpu_ms_total": total / 1000,
        "by_kind_ms": {k: round(v / 1000, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"ms": round(v[0] / 1000, 1), "calls": v[1], "name": n[:110]} for n, v in top],
        "offload_activations": args.offload_activations,
        "idle_gaps": gaps,
        "copies_by_caller": copies,
    }, indent=1))
    if args.trace:
        raw = args.trace.removesuffix(".gz")
        prof.export_chrome_trace(raw)
        with open(raw, "rb") as source, gzip.open(args.trace, "wb") as target:
            shutil.copyfileobj(source, target)


if __name__ == "__main__":
    main()
