#!/usr/bin/env bash
# Third session, final commit: stock / ours / ours with the guide's TREAD route in the same run again
# (the code after the review fixes), for the record of issue 11.
set -u
source benchmarks/gpu_lib.sh
install_wheels
: > $OUT/bench.jsonl
export BENCH_TIMEOUT=280
b --compare-stock --tread '{"routes": [{"selection_ratio": 0.5, "start_layer_idx": 2, "end_layer_idx": -2}]}' --steps 5 --warmup 3
