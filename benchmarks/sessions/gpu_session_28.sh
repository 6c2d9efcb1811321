#!/usr/bin/env bash
# 2026-12-07, one device command (< 8 min): NABLA on the GPU on the tiny model (compiled flex attention,
# forward and backward); Lite 512x768x61 after the redesign with one no-grad forward timed (a rollout
# step, an eval-loss level) and CREPA (vitg14-width features, block 8: step time, peak, caching cost);
# the same Lite step before the redesign (34f72c5, carried in .old/), same flags, same card (#23); Lite
# with every sample rolled out one sampler step (#20). NABLA's full-size comparisons: gpu_session_29.sh.
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
: > $OUT/bench.jsonl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m k5tune.cli make-tiny-model --nabla /tmp/tinyn > /dev/null 2>> $OUT/err.txt
BENCH_TIMEOUT=50 b --model /tmp/tinyn --resolution 256x384 --frames 17 --steps 3 --warmup 2 --sparse-attention nabla
BENCH_TIMEOUT=200 b --modulation-bf16 --steps 4 --warmup 3 --forward --crepa dinov2_vitg14 --crepa-block 8
(export PYTHONPATH=/tmp/site:$PWD/.old; BENCH_TIMEOUT=90 b --modulation-bf16 --steps 4 --warmup 3)
BENCH_TIMEOUT=100 b --modulation-bf16 --steps 4 --warmup 3 --rollout 1
