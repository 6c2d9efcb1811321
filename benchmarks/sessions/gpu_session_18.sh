#!/usr/bin/env bash
# Third session, Lite: the eager blocks in the same session (reference for session 17), full
# checkpointing compiled, and the profile of the compiled dense and TREAD steps.
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
: > $OUT/bench.jsonl
export BENCH_TIMEOUT=200
ROUTE='{"routes": [{"selection_ratio": 0.5, "start_layer_idx": 2, "end_layer_idx": -2}]}'
b --no-compile-blocks --tread "$ROUTE" --steps 5 --warmup 2
b --checkpointing full --steps 5 --warmup 3
timeout 150 python3 benchmarks/tools/profile_step.py > $OUT/profile_dense.json 2>> $OUT/err.txt
timeout 150 python3 benchmarks/tools/profile_step.py --tread "$ROUTE" > $OUT/profile_tread.json 2>> $OUT/err.txt
for f in $OUT/profile_*.json; do python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[1], {k: r[k] for k in ('step_wall_s','step_cpu_enqueue_s','gpu_busy_s','gpu_idle_share_of_wall','kernel_launches','by_kind_ms')})" $f; done
