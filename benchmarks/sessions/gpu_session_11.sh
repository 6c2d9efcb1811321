#!/usr/bin/env bash
# Activation offload: Lite and Pro, with and without weight offload.
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
: > $OUT/bench.jsonl
b --steps 4 --warmup 2 --group-offload 1 --offload-stream
b --steps 4 --warmup 2 --offload-activations
b --flavour t2v-pro-sft-5s-hd --steps 3 --warmup 1 --offload-activations
b --flavour t2v-pro-sft-5s-hd --steps 3 --warmup 1 --group-offload 1 --offload-stream
