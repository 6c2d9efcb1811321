#!/usr/bin/env bash
# NABLA at full size, 2026-12-07 (round 2, session 4): `bash benchmarks/sessions/gpu_session_30.sh PART`,
# one device command per part; rows (with scenario names) in $OUT/rows.jsonl.
# lite: Lite 10 s (512x768x241, 93,696 tokens): NABLA at a fixed 10 % top-of-map density plus the STA
#       window (the stand-in for a trained checkpoint's peaked map: random weights give a near-uniform
#       one) and our dense step; then `k5tune train` on the full-size Lite 10 s transformer (NABLA by
#       default, as the checkpoint sets it: P 0.9) at 512x768x61, and the bench step at that shape.
# pro:  Pro HD (768x1280x61, activation offload) NABLA 10 % and dense; Pro 512x768x61 NABLA 10 % and
#       dense (its baseline on this card).
set -u
source benchmarks/sessions/gpu_lib.sh
start_session
case "${1:-lite}" in
  lite)
    BENCH_TIMEOUT=200 b --scenario lite-10s-nabla
    BENCH_TIMEOUT=190 b --scenario lite-10s-dense
    FLAVOUR=t2v-lite-sft-10s train_lite_fullsize
    BENCH_TIMEOUT=100 b --scenario lite-10s-61f ;;
  pro)
    BENCH_TIMEOUT=150 b --scenario pro-hd-nabla
    BENCH_TIMEOUT=200 b --scenario pro-hd-dense
    BENCH_TIMEOUT=110 b --scenario pro-nabla
    BENCH_TIMEOUT=110 b --scenario pro-dense ;;
esac
