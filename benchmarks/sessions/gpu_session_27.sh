#!/usr/bin/env bash
# Fourth session: the run-to-run variation of our own step (the floor for run 27's offload check), and
# the default step against activation offload on the same machine.
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
: > $OUT/bench.jsonl
timeout 200 python3 benchmarks/tools/check_fast_path.py --offload-activations --same > $OUT/check_same.json 2>> $OUT/err.txt || tail -3 $OUT/err.txt
cat $OUT/check_same.json
BENCH_TIMEOUT=150 b --modulation-bf16 --steps 5 --warmup 3
BENCH_TIMEOUT=150 b --offload-activations --modulation-bf16 --steps 5 --warmup 3
