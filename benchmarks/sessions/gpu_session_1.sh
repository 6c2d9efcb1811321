#!/usr/bin/env bash
# One device call: install the carried wheels, check the fast path's numerics at full size, and time
# our step against the stock diffusers step (Lite, 512x768, 61 frames, rank 32) with variants.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
python3 -c "import torch, diffusers, transformers, peft; print(torch.__version__, diffusers.__version__, transformers.__version__, peft.__version__)" | tee -a $OUT/gpu.txt
python3 benchmarks/tools/check_fast_path.py > $OUT/check_fast_path.json 2> $OUT/check.err; tail -3 $OUT/check.err; cat $OUT/check_fast_path.json
run() { name=$1; shift; python3 -m k5tune.cli bench --flavour t2v-lite-sft-5s --resolution 512x768 --frames 61 --rank 32 "$@" --output $OUT/$name.json > /dev/null 2> $OUT/$name.err || tail -5 $OUT/$name.err; python3 -c "import json,sys; r=json.load(open('$OUT/$name.json')); print('$name', {k: (round(v['step_s'],3), round(v.get('peak_gib',0),2), round(v.get('fraction_of_matmul_peak',0),3)) for k,v in r.items() if isinstance(v, dict) and 'step_s' in v}, 'speedup', r.get('speedup_vs_stock'))" 2>/dev/null; }
run lite_default --compare-stock --steps 5 --warmup 2
run lite_full_ckpt --checkpointing full --steps 5 --warmup 2
run lite_flash --attention flash --steps 5 --warmup 2
run lite_nocompile --no-compile --steps 5 --warmup 2
run lite_unfused_cudnn --no-fused --steps 5 --warmup 2
