#!/usr/bin/env bash
# 2026-12-07, call B: Pro (19B) at its HD shape 768x1280x61 (61,440 tokens, activation offload): our
# dense step against NABLA at a fixed 10 % density plus the STA window; Pro 512x768x61 under NABLA (its
# dense step: benchmarks/results); Lite 5 s with every sample rolled out one sampler step (rollout's cost).
set -u
source benchmarks/gpu_lib.sh
install_wheels
: > $OUT/bench.jsonl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
P="--flavour t2v-pro-sft-5s-hd --modulation-bf16 --steps 2 --warmup 1"
BENCH_TIMEOUT=200 b $P --resolution 768x1280 --offload-activations --sparse-attention dense
BENCH_TIMEOUT=120 b $P --resolution 768x1280 --offload-activations --nabla-density 0.1
BENCH_TIMEOUT=110 b $P --resolution 512x768 --nabla-density 0.1
BENCH_TIMEOUT=100 b --modulation-bf16 --steps 4 --warmup 3 --rollout 1
