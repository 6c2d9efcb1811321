#!/usr/bin/env bash
# 2026-12-07, call A: NABLA on the GPU on the tiny model (compiled flex attention, forward and backward);
# #23's Lite step before (34f72c5, carried in .old/) and after the redesign, same flags, same card;
# rollout (every sample rolled out 1 sampler step) and one no-grad forward (a rollout step, an eval level).
set -u
source benchmarks/gpu_lib.sh
install_wheels
: > $OUT/bench.jsonl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m k5tune.cli make-tiny-model --nabla /tmp/tinyn > /dev/null 2>> $OUT/err.txt
BENCH_TIMEOUT=80 b --model /tmp/tinyn --resolution 256x384 --frames 17 --steps 3 --warmup 2 --sparse-attention nabla
BENCH_TIMEOUT=80 b --model /tmp/tinyn --resolution 256x384 --frames 17 --steps 3 --warmup 2 --sparse-attention nabla --nabla-density 0.3
# before/after (#23): 34f72c5's code, then ours
(export PYTHONPATH=/tmp/site:$PWD/.old; BENCH_TIMEOUT=105 b --modulation-bf16 --steps 5 --warmup 3)
BENCH_TIMEOUT=105 b --modulation-bf16 --steps 5 --warmup 3 --forward
BENCH_TIMEOUT=105 b --modulation-bf16 --steps 5 --warmup 3 --rollout 1
BENCH_TIMEOUT=105 b --modulation-bf16 --steps 5 --warmup 3 --rollout 2
