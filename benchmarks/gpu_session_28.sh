#!/usr/bin/env bash
# 2026-12-07, call A (one device command, < 10 min): NABLA on the GPU on the tiny model (compiled flex
# attention, forward and backward); #23's Lite step before (34f72c5, carried in .old/) and after the
# redesign, same flags, same card; after: also one no-grad forward (a rollout step, an eval-loss level)
# and CREPA (vitg14 features, block 8: step time, peak, caching cost); Lite 10 s (512x768x241, 93,696
# tokens): our dense step against NABLA at a fixed 10 % top-of-map density plus the STA window (the
# stand-in for a trained checkpoint's peaked map; random weights give a near-uniform one).
set -u
source benchmarks/gpu_lib.sh
install_wheels
: > $OUT/bench.jsonl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m k5tune.cli make-tiny-model --nabla /tmp/tinyn > /dev/null 2>> $OUT/err.txt
BENCH_TIMEOUT=50 b --model /tmp/tinyn --resolution 256x384 --frames 17 --steps 3 --warmup 2 --sparse-attention nabla
(export PYTHONPATH=/tmp/site:$PWD/.old; BENCH_TIMEOUT=90 b --modulation-bf16 --steps 4 --warmup 3)
BENCH_TIMEOUT=200 b --modulation-bf16 --steps 4 --warmup 3 --forward --crepa dinov2_vitg14 --crepa-block 8
L="--flavour t2v-lite-sft-10s --frames 241 --modulation-bf16 --steps 2 --warmup 1"
BENCH_TIMEOUT=130 b $L --sparse-attention dense
BENCH_TIMEOUT=110 b $L --nabla-density 0.1
