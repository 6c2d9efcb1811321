#!/usr/bin/env bash
# Third session: `k5tune train` with the guide's TREAD route at full Lite size (random weights, cached
# data, validation off, blocks compiled): its steady-state step against the bench figure of session 17.
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
train_lite_fullsize ', "tread_config": {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 2, "end_layer_idx": -2}]}'
