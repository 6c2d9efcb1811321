#!/usr/bin/env bash
# Third session: `k5tune train` (dense) at full Lite size (random weights, cached data, validation off,
# blocks compiled): its steady-state step against the bench figure of session 17.
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
train_lite_fullsize
