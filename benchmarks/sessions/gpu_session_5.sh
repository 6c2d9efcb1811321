#!/usr/bin/env bash
# TREAD on Lite (dense and routed step in the same run), then Pro: stock vs ours in the same run.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
summary() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[-1], {k: (round(v['step_s'],3), round(v.get('peak_gib',0),2), round(v.get('fraction_of_matmul_peak',0),3)) for k,v in r.items() if isinstance(v, dict) and 'step_s' in v}, 'vs stock', r.get('speedup_vs_stock'), 'tread', r.get('tread_speedup_vs_dense'))" $1; }
python3 -m k5tune.cli bench --steps 4 --warmup 2 --tread '{"routes": [{"selection_ratio": 0.5, "start_layer_idx": 2, "end_layer_idx": -2}]}' --output $OUT/lite_tread.json > /dev/null 2> $OUT/err.txt || tail -4 $OUT/err.txt
summary $OUT/lite_tread.json
python3 -m k5tune.cli bench --flavour t2v-pro-sft-5s-hd --compare-stock --checkpointing full --steps 3 --warmup 2 --output $OUT/pro_full.json > /dev/null 2>> $OUT/err.txt || tail -4 $OUT/err.txt
summary $OUT/pro_full.json
python3 -m k5tune.cli bench --flavour t2v-pro-sft-5s-hd --keep-attention-blocks 24 --steps 3 --warmup 2 --output $OUT/pro_keep24.json > /dev/null 2>> $OUT/err.txt || tail -4 $OUT/err.txt
summary $OUT/pro_keep24.json
