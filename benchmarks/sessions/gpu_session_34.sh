#!/usr/bin/env bash
# NABLA's remaining measurements (issue #18, point 5), written 2026-12-07 (round 2, session 8, which was lent
# no device). One script for every call of a session: each call runs the next steps that fit its DEADLINE
# and remembers, on the machine, what ran, so the same command repeated on the warm machine goes on where
# the last one stopped (a cold machine starts over). Each call's $OUT holds everything measured so far.
#
#   K5TUNE_GIT_SHA=<commit sent> DEADLINE=570 bash benchmarks/sessions/gpu_session_34.sh   # until "all done"
#
# The steps, most wanted first (NEED: what the step took or is expected to take at full size, first step's
# compile included; a step starts only when NEED fits before DEADLINE, and is cut at LIMIT or the deadline):
#  1 lite-nabla-compiled  Lite 10 s 512x768x241 NABLA 10 % + STA, autotuned tiles, compiled blocks: the build
#                         expected fastest (~5.6-6 s; 3x dense needs <= 5.89 s), never measured
#  2 lite-dense           the dense step, same card (17.66 s on an H100 in session 7)
#  3 lite-nabla           the same NABLA step with eager blocks (today's default): which build is the default
#  4 pro-hd-nabla         Pro 768x1280x61 NABLA, with the faster Lite build's flags (target >= 2.5x dense)
#  5 pro-hd-dense         Pro 768x1280x61 dense, one timed step
#  6 pro-nabla            Pro 512x768x61 NABLA, faster Lite build (target <= dense at <= 48 GiB)
#  7 pro-dense            Pro 512x768x61 dense
#  8 profile              where the fastest Lite NABLA build's time goes (profile_step.py), for a missed 3x
#  9 train                `k5tune train` on the full-size Lite 10 s transformer, and the bench step at its shape
# Ran 2026-12-07 (session 8, one H100, benchmarks/results/2026-12-07-s8-h100.md): steps 1-5, step 1 failing
# twice in max-autotune mode; compiled NABLA blocks now autotune FlexAttention only, at static shapes
# (speed._nabla_block_compile_settings), so step 1 runs again. SKIP names the steps a fresh machine passes
# over: by default those measured then; SKIP="" runs them all again.
# Autotuning FlexAttention takes ~2.5 min at Lite 10 s the first time on a machine; k5tune keeps the compile
# cache in ~/.cache/k5tune/torchinductor, so a step cut by its limit and retried (once) resumes from it.
set -u
source benchmarks/sessions/gpu_lib.sh
start_session
resume_steps /tmp/k5s34 ${SKIP-lite-dense lite-nabla pro-hd-nabla pro-hd-dense}

profile() {
  timeout $BENCH_TIMEOUT python3 benchmarks/tools/profile_step.py --flavour t2v-lite-sft-10s --frames 241 --nabla-density 0.1 \
    --modulation-bf16 --warmup 1 $(fastest_nabla_flags 241) > $STATE/profile.json 2>> $OUT/err.txt || { tail -5 $OUT/err.txt; return 1; }
  head -c 3000 $STATE/profile.json
}

train() {
  FLAVOUR=t2v-lite-sft-10s train_lite_fullsize && cp $OUT/train.txt $OUT/train_summary.json $STATE/ \
    && b --scenario lite-10s-61f $(fastest_nabla_flags 241)
}

run_steps() {
  step lite-nabla-compiled 220 330 b --scenario lite-10s-nabla --compile-blocks || return
  step lite-dense 120 170 b --scenario lite-10s-dense-1 || return
  step lite-nabla 200 330 b --scenario lite-10s-nabla || return
  local flags; flags=$(fastest_nabla_flags 241); echo "fastest Lite NABLA build: ${flags:-none}"
  step pro-hd-nabla 260 360 b --scenario pro-hd-nabla $flags || return
  step pro-hd-dense 190 280 b --scenario pro-hd-dense --steps 1 || return
  step pro-nabla 190 270 b --scenario pro-nabla $flags || return
  step pro-dense 170 240 b --scenario pro-dense || return
  step profile 200 250 profile || return
  step train 280 330 train || return
  echo "all done"
}
run_steps
cp $STATE/tries.txt $OUT/
for f in profile.json train.txt train_summary.json; do [[ -f $STATE/$f ]] && cp $STATE/$f $OUT/; done
exit 0
