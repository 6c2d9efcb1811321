#!/usr/bin/env bash
# Pro at 512x768x61 rank 32: the stock diffusers + peft step and ours, in the same run.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -m k5tune.cli bench --flavour t2v-pro-sft-5s-hd --compare-stock --keep-attention-blocks 24 --steps 3 --warmup 2 --output $OUT/pro_compare.json > /dev/null 2> $OUT/err.txt || tail -4 $OUT/err.txt
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: (round(v['step_s'],3), round(v.get('peak_gib',0),2), round(v.get('fraction_of_matmul_peak',0),3)) for k,v in r.items() if isinstance(v, dict) and 'step_s' in v}, 'vs stock', r.get('speedup_vs_stock'))" $OUT/pro_compare.json
