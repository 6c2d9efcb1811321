#!/usr/bin/env bash
# Profile our step (where does the time go?) and time checkpointing variants.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 benchmarks/tools/profile_step.py --checkpointing selective > $OUT/profile_selective.json 2> $OUT/err.txt || tail -5 $OUT/err.txt
python3 -c "import json; r=json.load(open('$OUT/profile_selective.json')); print(json.dumps({k: r[k] for k in ('gpu_ms_total','by_kind_ms')})); [print(t) for t in r['top_kernels'][:14]]"
for mode in selective none; do
  python3 -m k5tune.cli bench --checkpointing $mode --steps 4 --warmup 2 --output $OUT/bench_$mode.json > /dev/null 2>> $OUT/err.txt || tail -3 $OUT/err.txt
  python3 -c "import json; r=json.load(open('$OUT/bench_$mode.json'))['ours']; print('$mode', round(r['step_s'],3), 's', round(r['peak_gib'],2), 'GiB', round(r['fraction_of_matmul_peak'],3))"
done
