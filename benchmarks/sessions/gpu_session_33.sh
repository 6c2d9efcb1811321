#!/usr/bin/env bash
# NABLA, written 2026-12-07 (round 2, session 7, when starts kept failing: each call must stand alone).
# `bash benchmarks/sessions/gpu_session_33.sh PART`, one device command per part; rows in $OUT/rows.jsonl.
# core:  the Lite 10 s NABLA step (512x768x241, 10 % + STA) eager with heuristic tiles, then with compiled
#        blocks, the dense step on the same card; then Pro 512x768x61 NABLA with the faster of the two Lite
#        builds and Pro dense; then the Lite NABLA step as built before (autotuned tiles) if time is left.
# pro:   Pro HD 768x1280x61 NABLA (FLAGS: the faster Lite build's flags) and dense, one timed step each.
# Ran once (2026-12-07, H100, call 1 of benchmarks/results/2026-12-07-s7-h100.md): the two Lite NABLA builds
# measured; Lite dense and the Pro runs were cut by their limits before a step (the Lite 10 s dense build
# and compile take ~60 s, a Pro build longer): the limits below are the corrected ones.
# autotune: Lite 10 s NABLA with autotuned tiles, eager then compiled blocks (the next session's first call).
# The rest (probe, train, profile) as in gpu_session_32.sh.
set -u
case "${1:-core}" in core|pro|autotune) ;; *) exec bash benchmarks/sessions/gpu_session_32.sh "$1" ;; esac
source benchmarks/sessions/gpu_lib.sh
start_session
fits() { (( SECONDS + $1 <= ${DEADLINE:-570} )) || { echo "skipped: $2 (deadline)"; return 1; }; }

case "${1:-core}" in
  core)
    fits 120 "lite-10s-nabla heuristic" && BENCH_TIMEOUT=120 b --scenario lite-10s-nabla --flex-tiling heuristic
    tiling=heuristic; grep -q '"flex_tiling": "heuristic"' $OUT/bench.jsonl || tiling=autotune
    fits 200 "lite-10s-nabla compiled blocks $tiling" && BENCH_TIMEOUT=200 b --scenario lite-10s-nabla \
      --flex-tiling $tiling --compile-blocks
    fits 150 lite-10s-dense && BENCH_TIMEOUT=150 b --scenario lite-10s-dense --steps 2 --warmup 1
    flags=$(fastest_nabla_flags); echo "fastest Lite NABLA build: ${flags:-none}"
    fits 240 pro-nabla && BENCH_TIMEOUT=240 b --scenario pro-nabla $flags
    fits 200 pro-dense && BENCH_TIMEOUT=200 b --scenario pro-dense
    fits 200 "lite-10s-nabla autotune" && BENCH_TIMEOUT=200 b --scenario lite-10s-nabla ;;
  autotune)
    fits 260 "lite-10s-nabla autotune" && BENCH_TIMEOUT=260 b --scenario lite-10s-nabla
    fits 300 "lite-10s-nabla compiled autotune" && BENCH_TIMEOUT=300 b --scenario lite-10s-nabla --compile-blocks ;;
  pro)
    fits 300 pro-hd-nabla && BENCH_TIMEOUT=300 b --scenario pro-hd-nabla ${FLAGS:-}
    fits 240 pro-hd-dense && BENCH_TIMEOUT=240 b --scenario pro-hd-dense --steps 1 ;;
esac
