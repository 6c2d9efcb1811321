#!/usr/bin/env bash
# Fourth session, Lite: `k5tune train` with offload_activations (compiled blocks, selective kept) against
# the bench, and a profile of the offloaded step (do the copies hide behind the compute?).
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
train_lite_fullsize ', "offload_activations": true'
timeout 150 python3 benchmarks/tools/profile_step.py --warmup 2 --offload-activations > $OUT/profile_offload.json 2>> $OUT/err.txt || tail -3 $OUT/err.txt
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r[k] for k in ('step_wall_s','gpu_busy_s','gpu_idle_share_of_wall','by_kind_ms')}); print(json.dumps(r['idle_gaps'][:6])); print(json.dumps(r['copies_by_caller'][:6]))" $OUT/profile_offload.json
