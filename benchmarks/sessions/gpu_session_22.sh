#!/usr/bin/env bash
# Fourth session, Lite: activation offload of compiled blocks (selective kept) against the default step
# and stock in the same run; compiled full checkpointing with it; a profile with idle gaps and copies.
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
: > $OUT/bench.jsonl
export BENCH_TIMEOUT=200
b --compare-stock --steps 5 --warmup 3
b --offload-activations --steps 5 --warmup 3
b --offload-activations --modulation-bf16 --steps 5 --warmup 3
b --checkpointing full --offload-activations --steps 5 --warmup 3
timeout 150 python3 benchmarks/tools/profile_step.py --warmup 2 > $OUT/profile_dense.json 2>> $OUT/err.txt || tail -3 $OUT/err.txt
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r[k] for k in ('step_wall_s','gpu_busy_s','gpu_idle_share_of_wall')}); print(json.dumps(r['idle_gaps'][:8])); print(json.dumps(r['copies_by_caller'][:6]))" $OUT/profile_dense.json
