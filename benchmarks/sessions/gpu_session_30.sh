#!/usr/bin/env bash
# NABLA at full size, 2026-12-07 (round 2, session 4). `bash benchmarks/sessions/gpu_session_30.sh lite|pro`.
# lite: Lite 10 s (512x768x241, 93,696 tokens): our dense step, NABLA at a fixed 10 % top-of-map density
#   plus the STA window (the stand-in for a trained checkpoint's peaked map: random weights give a
#   near-uniform one), and NABLA as the checkpoint configures it (P 0.9).
# pro: Pro HD (768x1280x61, activation offload) dense and NABLA 10 %; Pro 512x768x61 NABLA 10 %; then
#   `k5tune train` on the full-size Lite 10 s transformer (NABLA by default) at 512x768x61 against the
#   bench step at the same shape and attention.
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
: > $OUT/bench.jsonl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
if [ "${1:-lite}" = lite ]; then
  L="--flavour t2v-lite-sft-10s --frames 241 --modulation-bf16 --steps 2 --warmup 1"
  BENCH_TIMEOUT=200 b $L --nabla-density 0.1
  BENCH_TIMEOUT=200 b $L --sparse-attention dense
  BENCH_TIMEOUT=170 b $L
else
  P="--flavour t2v-pro-sft-5s-hd --modulation-bf16 --steps 2 --warmup 1"
  BENCH_TIMEOUT=150 b $P --resolution 768x1280 --offload-activations --nabla-density 0.1
  BENCH_TIMEOUT=200 b $P --resolution 768x1280 --offload-activations --sparse-attention dense
  BENCH_TIMEOUT=110 b $P --resolution 512x768 --nabla-density 0.1
  FLAVOUR=t2v-lite-sft-10s train_lite_fullsize
  BENCH_TIMEOUT=100 b --flavour t2v-lite-sft-10s --frames 61 --modulation-bf16 --steps 6 --warmup 2
fi
