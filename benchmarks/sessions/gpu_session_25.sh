#!/usr/bin/env bash
# Fourth session, 2 GPUs: data-parallel `k5tune train` (num_processes 2) with compiled blocks, dense; then
# with offload_activations and the guide's TREAD route (saved-tensor hooks under DDP).
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/gpus.txt
train_lite_fullsize ', "num_processes": 2'
mv $OUT/train_summary.json $OUT/ddp_dense.json; mv $OUT/train.txt $OUT/ddp_dense.txt
ROUTE='{"routes": [{"selection_ratio": 0.5, "start_layer_idx": 2, "end_layer_idx": -2}]}'
train_lite_fullsize ", \"num_processes\": 2, \"offload_activations\": true, \"tread_config\": $ROUTE"
mv $OUT/train_summary.json $OUT/ddp_offload_tread.json; mv $OUT/train.txt $OUT/ddp_offload_tread.txt
