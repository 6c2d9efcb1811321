#!/usr/bin/env bash
# NABLA at full size (next session; one device command each part): Lite 10 s (512x768x241, 93,696 tokens)
# and Pro HD (768x1280x61, activation offload): our dense step against NABLA at a fixed 10 % top-of-map
# density plus the STA window (the stand-in for a trained checkpoint's peaked map; random weights give a
# near-uniform one), and Pro 512x768x61 under NABLA. `bash benchmarks/sessions/gpu_session_29.sh lite|pro`.
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
: > $OUT/bench.jsonl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ "${1:-lite}" = lite ]; then
  L="--flavour t2v-lite-sft-10s --frames 241 --modulation-bf16 --steps 2 --warmup 1"
  BENCH_TIMEOUT=200 b $L --sparse-attention dense
  BENCH_TIMEOUT=150 b $L --nabla-density 0.1
  BENCH_TIMEOUT=170 b $L
else
  P="--flavour t2v-pro-sft-5s-hd --modulation-bf16 --steps 2 --warmup 1"
  BENCH_TIMEOUT=200 b $P --resolution 768x1280 --offload-activations --sparse-attention dense
  BENCH_TIMEOUT=120 b $P --resolution 768x1280 --offload-activations --nabla-density 0.1
  BENCH_TIMEOUT=110 b $P --resolution 512x768 --nabla-density 0.1
fi
