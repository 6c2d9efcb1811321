#!/usr/bin/env bash
# Fourth session, Pro: activation offload of compiled blocks (selective, all attention kept) with bf16
# modulation; compiled full checkpointing with it.
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
: > $OUT/bench.jsonl
export BENCH_TIMEOUT=280
b --flavour t2v-pro-sft-5s-hd --offload-activations --modulation-bf16 --steps 5 --warmup 2
b --flavour t2v-pro-sft-5s-hd --checkpointing full --offload-activations --modulation-bf16 --steps 5 --warmup 2
