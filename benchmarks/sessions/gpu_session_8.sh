#!/usr/bin/env bash
# Lite with group offload (1 block per group, with and without the side stream) against no offload.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
: > $OUT/bench.jsonl
b() { python3 -m k5tune.cli bench --steps 4 --warmup 2 "$@" --output /tmp/b.json > /dev/null 2>> $OUT/err.txt || tail -3 $OUT/err.txt; python3 -c "import json,sys; r=json.load(open('/tmp/b.json')); open('$OUT/bench.jsonl','a').write(json.dumps(r)+'\n'); print(sys.argv[1:], {k: (round(v['step_s'],3), round(v['peak_gib'],2)) for k,v in r.items() if isinstance(v, dict) and 'step_s' in v})" "$@"; }
b --checkpointing full --steps 3
b --group-offload 1 --offload-stream
b --group-offload 1
