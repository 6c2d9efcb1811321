#!/usr/bin/env bash
# Third session, Pro: modulation stored in bf16 (modulation_precision auto) without weight offload, with
# activation offload (target <= 48 GiB) and with the default selective checkpointing (all attention kept,
# blocks compiled); then leaf_level group offload.
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
: > $OUT/bench.jsonl
export BENCH_TIMEOUT=190
PRO="--flavour t2v-pro-sft-5s-hd --steps 2 --warmup 1"
b $PRO --checkpointing full --offload-activations --modulation-bf16
b $PRO --modulation-bf16 --warmup 2
b $PRO --group-offload 1 --offload-stream --leaf-level
