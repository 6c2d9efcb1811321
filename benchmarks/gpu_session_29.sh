#!/usr/bin/env bash
# 2026-12-07, call B: Lite 10 s (512x768x241, 93,696 tokens), our dense step against NABLA: at a fixed
# 10 % top-of-map density plus the STA window (the stand-in for a trained checkpoint's peaked map), and
# at the checkpoint's P 0.9 on random weights (a near-uniform map: the worst case).
set -u
source benchmarks/gpu_lib.sh
install_wheels
: > $OUT/bench.jsonl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
L="--flavour t2v-lite-sft-10s --frames 241 --modulation-bf16 --steps 3 --warmup 2"
BENCH_TIMEOUT=240 b $L --sparse-attention dense
BENCH_TIMEOUT=150 b $L --nabla-density 0.1
BENCH_TIMEOUT=170 b $L
