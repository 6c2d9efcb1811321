#!/usr/bin/env bash
# Third session, Lite: leaf_level against block_level group offload; where the time of the dense step and
# of the TREAD step goes (GPU busy/idle, CPU enqueue time, kernels), with Chrome traces.
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
: > $OUT/bench.jsonl
export BENCH_TIMEOUT=240
b --steps 4 --warmup 2 --group-offload 1 --offload-stream
b --steps 4 --warmup 2 --group-offload 1 --offload-stream --leaf-level
ROUTE='{"routes": [{"selection_ratio": 0.5, "start_layer_idx": 2, "end_layer_idx": -2}]}'
timeout 200 python3 benchmarks/tools/profile_step.py --trace $OUT/trace_dense.json.gz > $OUT/profile_dense.json 2>> $OUT/err.txt
timeout 200 python3 benchmarks/tools/profile_step.py --tread "$ROUTE" --trace $OUT/trace_tread.json.gz > $OUT/profile_tread.json 2>> $OUT/err.txt
for f in $OUT/profile_*.json; do python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[1], {k: r[k] for k in ('step_wall_s','step_cpu_enqueue_s','gpu_busy_s','gpu_idle_share_of_wall','kernel_launches','by_kind_ms')})" $f; done
ls -la $OUT
