#!/usr/bin/env bash
# Fourth session, after the pinned slabs (PinnedArena) and NCCL's device binding: activation offload at
# full size is exact against our own step (two passes, the second reusing the slabs); its bench figure;
# data-parallel `k5tune train` with it on 2 GPUs.
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
: > $OUT/bench.jsonl
timeout 200 python3 benchmarks/tools/check_fast_path.py --offload-activations > $OUT/check_offload.json 2>> $OUT/err.txt || tail -3 $OUT/err.txt
cat $OUT/check_offload.json
BENCH_TIMEOUT=200 b --offload-activations --modulation-bf16 --steps 5 --warmup 3
train_lite_fullsize ', "num_processes": 2, "offload_activations": true'
grep -c "Guessing device ID" $OUT/err.txt
