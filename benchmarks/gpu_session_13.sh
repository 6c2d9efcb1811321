#!/usr/bin/env bash
# The whole full-size `k5tune train` (session 10, without its text-encoding timing), then int8/fp8 base weights.
set -u
SKIP_TEXT_TIMING=1 bash benchmarks/gpu_session_10.sh
rm -rf /tmp/k5full
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import torch, torchao; print('torchao', torchao.__version__, 'torch', torch.__version__)" 2>&1 | tail -1
: > $OUT/bench.jsonl
b() { timeout 150 python3 -m k5tune.cli bench "$@" --output /tmp/b.json > /dev/null 2>> $OUT/err_bench.txt || tail -3 $OUT/err_bench.txt; python3 -c "import json,sys; r=json.load(open('/tmp/b.json')); open('$OUT/bench.jsonl','a').write(json.dumps(r)+'\n'); print(sys.argv[1:], {k: (round(v['step_s'],3), round(v['peak_gib'],2)) for k,v in r.items() if isinstance(v, dict) and 'step_s' in v}, r.get('base_precision'))" "$@"; rm -f /tmp/b.json; }
b --steps 3 --warmup 1 --base-precision int8
b --flavour t2v-pro-sft-5s-hd --steps 2 --warmup 1 --base-precision int8 --offload-activations
b --steps 3 --warmup 1 --base-precision fp8
