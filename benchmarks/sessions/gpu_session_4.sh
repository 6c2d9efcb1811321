#!/usr/bin/env bash
# `k5tune train` at full Lite size (random weights, cached data, validation off) against `k5tune bench`
# in the same call: the steady-state step time of the real loop should be within 10% of the bench.
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
train_lite_fullsize
python3 -m k5tune.cli bench --steps 6 --warmup 2 --output $OUT/bench.json > /dev/null 2>> $OUT/err.txt
python3 -c "import json; r=json.load(open('$OUT/bench.json'))['ours']; print('bench', round(r['step_s'],3), 's', round(r['peak_gib'],2), 'GiB')"
