#!/usr/bin/env bash
# (Prepared for the next session, not run yet.) leaf_level group offload against block_level, Lite and
# Pro, with the stream and activation offload (the defaults with group offload).
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
: > $OUT/bench.jsonl
b --steps 4 --warmup 2 --group-offload 1 --offload-stream
b --steps 4 --warmup 2 --group-offload 1 --offload-stream --leaf-level
b --flavour t2v-pro-sft-5s-hd --steps 2 --warmup 1 --group-offload 1 --offload-stream --leaf-level
