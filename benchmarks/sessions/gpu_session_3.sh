#!/usr/bin/env bash
# After the fused LoRA forward: profile again, check numerics, and map speed against memory.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 benchmarks/tools/check_fast_path.py > $OUT/check_fast_path.json 2> $OUT/err.txt || tail -5 $OUT/err.txt
python3 -c "import json; r=json.load(open('$OUT/check_fast_path.json')); print({k: r[k] for k in ('forward_relative_error','lora_grad_relative_error_median','lora_grad_relative_error_max','finite')})"
python3 benchmarks/tools/profile_step.py --checkpointing selective > $OUT/profile.json 2>> $OUT/err.txt || tail -5 $OUT/err.txt
python3 -c "import json; r=json.load(open('$OUT/profile.json')); print(json.dumps({k: r[k] for k in ('gpu_ms_total','by_kind_ms')})); [print(t) for t in r['top_kernels'][:12]]"
: > $OUT/bench.jsonl
b() { python3 -m k5tune.cli bench --steps 4 --warmup 2 "$@" --output /tmp/b.json > /dev/null 2>> $OUT/err.txt || tail -3 $OUT/err.txt; python3 -c "import json,sys; r=json.load(open('/tmp/b.json')); open('$OUT/bench.jsonl','a').write(json.dumps(r)+'\n'); print(sys.argv[1:], {k: (round(v['step_s'],3), round(v['peak_gib'],2)) for k,v in r.items() if isinstance(v, dict) and 'step_s' in v}, r.get('speedup_vs_stock'))" "$@"; }
b --compare-stock
b --keep-attention-blocks 16
b --keep-attention-blocks 8
b --checkpointing full
