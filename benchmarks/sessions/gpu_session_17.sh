#!/usr/bin/env bash
# Third session, Lite: blocks compiled whole (checkpoint inside) against the eager blocks — numerics
# against stock at full size, then stock / ours / ours with TREAD in the same run.
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
: > $OUT/bench.jsonl
export BENCH_TIMEOUT=280
ROUTE='{"routes": [{"selection_ratio": 0.5, "start_layer_idx": 2, "end_layer_idx": -2}]}'
timeout 200 python3 benchmarks/tools/check_fast_path.py > $OUT/check_fast_path.json 2>> $OUT/err.txt || tail -3 $OUT/err.txt
cat $OUT/check_fast_path.json | head -12
b --compare-stock --tread "$ROUTE" --steps 5 --warmup 3
