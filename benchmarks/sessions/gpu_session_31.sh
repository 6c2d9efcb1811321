#!/usr/bin/env bash
# NABLA, 2026-12-07 (round 2, session 5): `bash benchmarks/sessions/gpu_session_31.sh PART`, one device command
# per part; rows (with scenario names) in $OUT/rows.jsonl. Written for a build whose NABLA blocks compiled
# whole with given FlexAttention tiles; that build did not lower on the H100 (results/2026-12-07-s5-h100.md).
# NABLA's blocks are eager by default again: add --compile-blocks to a NABLA scenario for the compiled ones.
# (Device time was short: each call pairs a NABLA step with its dense baseline on the same card.)
# a:      Lite 10 s (512x768x241, 93,696 tokens): NABLA 10 % + STA and our dense step; Pro 512x768x61 NABLA
#         (activation offload), against run 24's dense 7.69 s if b does not come.
# b:      Pro HD 768x1280x61 (61,440 tokens), activation offload: NABLA 10 % + STA and dense (one timed
#         step: ~35 s); Pro 512x768x61 dense, activation offload (pro-nabla's baseline, rerun).
# train:  `k5tune train` on the full-size Lite 10 s transformer (NABLA P 0.9 from its config) at 512x768x61,
#         and the bench step at that shape; the two BlockMask forms (benchmarks/tools/flex_mask_forms.py).
set -u
source benchmarks/sessions/gpu_lib.sh
start_session
case "${1:-a}" in
  a)
    BENCH_TIMEOUT=170 b --scenario lite-10s-nabla
    BENCH_TIMEOUT=170 b --scenario lite-10s-dense
    BENCH_TIMEOUT=170 b --scenario pro-nabla ;;
  b)
    BENCH_TIMEOUT=170 b --scenario pro-hd-nabla
    BENCH_TIMEOUT=200 b --scenario pro-hd-dense --steps 1
    BENCH_TIMEOUT=150 b --scenario pro-dense ;;
  one)  # one call for all, when device time allows no more (the dense baselines of Lite 10 s and Pro 512x768x61
        # from the earlier runs on the same card type); DEADLINE (s, default 560): start nothing that could
        # run past it
    fits() { (( SECONDS + $1 <= ${DEADLINE:-560} )) || { echo "skipped: $2 (deadline)"; return 1; }; }
    fits 150 pro-hd-nabla && BENCH_TIMEOUT=150 b --scenario pro-hd-nabla
    fits 120 lite-10s-nabla && BENCH_TIMEOUT=120 b --scenario lite-10s-nabla
    fits 170 pro-hd-dense && BENCH_TIMEOUT=170 b --scenario pro-hd-dense --steps 1
    fits 100 pro-nabla && BENCH_TIMEOUT=100 b --scenario pro-nabla ;;
  short)  # the least device time: the Lite 10 s NABLA step first (its dense baselines: H100 17.50 s, H200 17.70 s)
    fits() { (( SECONDS + $1 <= ${DEADLINE:-300} )) || { echo "skipped: $2 (deadline)"; return 1; }; }
    fits 120 lite-10s-nabla && BENCH_TIMEOUT=120 b --scenario lite-10s-nabla
    fits 150 pro-hd-nabla && BENCH_TIMEOUT=150 b --scenario pro-hd-nabla ;;
  train)
    FLAVOUR=t2v-lite-sft-10s train_lite_fullsize
    BENCH_TIMEOUT=150 b --scenario lite-10s-61f
    timeout 120 python3 benchmarks/tools/flex_mask_forms.py | tee $OUT/flex_mask_forms.json ;;
esac
