#!/usr/bin/env bash
# Group offload (Lite and Pro) against no offload, Pro without offload, VAE encode with patch conv.
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
: > $OUT/bench.jsonl
python3 benchmarks/tools/vae_encode.py 2>> $OUT/err.txt | tee $OUT/vae.jsonl
b --steps 4 --warmup 2
b --steps 4 --warmup 2 --checkpointing full
b --steps 4 --warmup 2 --group-offload 1 --offload-stream
b --steps 4 --warmup 2 --group-offload 1
b --flavour t2v-pro-sft-5s-hd --steps 3 --warmup 1 --group-offload 1 --offload-stream
