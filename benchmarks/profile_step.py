"""Profile one LoRA training step of our path on the GPU and print where the CUDA time goes.

    python benchmarks/profile_step.py [--checkpointing selective] [--steps-warmup 2]

Prints the top kernels and a summary by kind (attention, matrix products, fused/element-wise, other).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from k5tune.bench import BenchConfig, build_transformer, ours_step_fn
from k5tune.train.speed import SpeedPlan


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpointing", default="selective")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    device = torch.device("cuda")
    bench = BenchConfig(plan=SpeedPlan(checkpointing=args.checkpointing, attention=args.attention), device="cuda")
    step = ours_step_fn(build_transformer(bench, device), bench, device)
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    totals: dict[str, float] = defaultdict(float)
    kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            micros = event.device_time
            totals[kind(event.name)] += micros
            kernels[event.name][0] += micros
            kernels[event.name][1] += 1
    total = sum(totals.values())
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:25]
    print(json.dumps({
        "checkpointing": args.checkpointing,
        "gpu_ms_total": total / 1000,
        "by_kind_ms": {k: round(v / 1000, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"ms": round(v[0] / 1000, 1), "calls": v[1], "name": n[:110]} for n, v in top],
    }, indent=1))


if __name__ == "__main__":
    main()
