#!/usr/bin/env bash
# The whole full-size `k5tune train` (session 10, without its text-encoding timing), then int8/fp8 base weights.
set -u
SKIP_TEXT_TIMING=1 bash benchmarks/sessions/gpu_session_10.sh
rm -rf /tmp/k5full
source benchmarks/sessions/gpu_lib.sh
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1  # session 10 installed the wheels
python3 -c "import torch, torchao; print('torchao', torchao.__version__, 'torch', torch.__version__)" 2>&1 | tail -1
: > $OUT/bench.jsonl
export BENCH_TIMEOUT=150 BENCH_ERR=$OUT/err_bench.txt
b --steps 3 --warmup 1 --base-precision int8
b --flavour t2v-pro-sft-5s-hd --steps 2 --warmup 1 --base-precision int8 --offload-activations
b --steps 3 --warmup 1 --base-precision fp8
