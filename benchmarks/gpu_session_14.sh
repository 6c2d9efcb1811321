#!/usr/bin/env bash
# (Prepared for the next session, not run yet.) leaf_level group offload against block_level, Lite and
# Pro, with the stream and activation offload (the defaults with group offload).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
: > $OUT/bench.jsonl
b() { python3 -m k5tune.cli bench "$@" --output /tmp/b.json > /dev/null 2>> $OUT/err.txt || tail -3 $OUT/err.txt; python3 -c "import json,sys; r=json.load(open('/tmp/b.json')); open('$OUT/bench.jsonl','a').write(json.dumps(r)+'\n'); print(sys.argv[1:], {k: (round(v['step_s'],3), round(v['peak_gib'],2)) for k,v in r.items() if isinstance(v, dict) and 'step_s' in v})" "$@"; rm -f /tmp/b.json; }
b --steps 4 --warmup 2 --group-offload 1 --offload-stream
b --steps 4 --warmup 2 --group-offload 1 --offload-stream --leaf-level
b --flavour t2v-pro-sft-5s-hd --steps 2 --warmup 1 --group-offload 1 --offload-stream --leaf-level
