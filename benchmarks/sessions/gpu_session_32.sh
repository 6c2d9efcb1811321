#!/usr/bin/env bash
# NABLA, written 2026-12-07 (round 2, session 6, which had no device time): `bash benchmarks/sessions/gpu_session_32.sh
# PART`, one device command per part, in this order; rows (with scenario names) in $OUT/rows.jsonl. What changed
# since the last measured NABLA step (session 4, H200: 7.92 s, 46.33 GiB, 2.23x dense): queries and keys through
# the fast path's fused norm + RoPE kernel (the profile put ~1.1 s on the eager passes), the mask held as partial
# blocks (a third less mask memory: ~39 GiB predicted), and flex_tiling "heuristic" (default-mode compile with
# torch's tiles narrowed to 64, no autotuning) beside "autotune" (the default).
# Each part has a DEADLINE (s): it starts nothing that could run past it.
# probe:  does the narrowed heuristic tiling lower, how fast is it against max-autotune (FlexAttention alone,
#         Lite's head size 64 and Pro's 128, 6,144 tokens): flex_options_probe.py. ~1-2 min.
# lite:   Lite 10 s (512x768x241): NABLA with heuristic tiles, then compiled blocks (heuristic tiles, or autotuned
#         when the heuristic ones did not lower), the dense baseline (2 timed steps) on the same card, and
#         NABLA as built now (autotune) when time is left.
# pro:    Pro HD 768x1280x61 NABLA and dense (1 timed step), Pro 512x768x61 NABLA and dense, activation offload.
#         Add FLEX="--flex-tiling heuristic" when the lite part showed it at least as fast.
# train:  `k5tune train` on the full-size Lite 10 s transformer at 512x768x61 and the bench step at that shape;
#         the two BlockMask forms (flex_mask_forms.py: speed, and dq/dk/dv equal).
# profile: tools/profile_step.py on the Lite 10 s NABLA step, with PROFILE's extra flags.
set -u
source benchmarks/sessions/gpu_lib.sh
start_session
fits() { (( SECONDS + $1 <= ${DEADLINE:-570} )) || { echo "skipped: $2 (deadline)"; return 1; }; }
FLEX=${FLEX:-}
case "${1:-probe}" in
  probe)
    for dim in 64 128; do
      fits 60 "probe max-autotune $dim" && timeout 120 python3 benchmarks/tools/flex_options_probe.py --head-dim $dim \
        --only max-autotune | tee -a $OUT/probe.jsonl
      fits 40 "probe clamped $dim" && timeout 90 python3 benchmarks/tools/flex_options_probe.py --head-dim $dim \
        --only clamped | tee -a $OUT/probe.jsonl
    done ;;
  lite)
    # heuristic tiles first (no autotuning: a short compile); when they do not lower, compiled blocks autotune
    fits 120 "lite-10s-nabla heuristic" && BENCH_TIMEOUT=120 b --scenario lite-10s-nabla --flex-tiling heuristic
    tiling=heuristic; grep -q '"flex_tiling": "heuristic"' $OUT/bench.jsonl || tiling=autotune
    fits 200 "lite-10s-nabla compiled blocks $tiling" && BENCH_TIMEOUT=200 b --scenario lite-10s-nabla \
      --flex-tiling $tiling --compile-blocks
    fits 90 "lite-10s-dense" && BENCH_TIMEOUT=90 b --scenario lite-10s-dense --steps 2 --warmup 1
    fits 200 lite-10s-nabla && BENCH_TIMEOUT=200 b --scenario lite-10s-nabla ;;
  pro)
    fits 200 pro-hd-nabla && BENCH_TIMEOUT=200 b --scenario pro-hd-nabla $FLEX
    fits 150 pro-hd-dense && BENCH_TIMEOUT=150 b --scenario pro-hd-dense --steps 1
    fits 100 pro-nabla && BENCH_TIMEOUT=100 b --scenario pro-nabla $FLEX
    fits 100 pro-dense && BENCH_TIMEOUT=100 b --scenario pro-dense --steps 3 ;;
  train)
    fits 200 train && FLAVOUR=t2v-lite-sft-10s train_lite_fullsize
    fits 150 lite-10s-61f && BENCH_TIMEOUT=150 b --scenario lite-10s-61f $FLEX
    fits 120 flex_mask_forms && timeout 120 python3 benchmarks/tools/flex_mask_forms.py | tee $OUT/flex_mask_forms.json ;;
  profile)  # where a NABLA step's time goes: PROFILE="--compile-blocks --flex-tiling heuristic" (say)
    fits 240 profile && timeout 240 python3 benchmarks/tools/profile_step.py --flavour t2v-lite-sft-10s --frames 241 \
      --nabla-density 0.1 --modulation-bf16 --warmup 1 ${PROFILE:-} > $OUT/profile.json 2>> $OUT/err.txt \
      || tail -5 $OUT/err.txt
    head -c 3000 $OUT/profile.json ;;
esac
