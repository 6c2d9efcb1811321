#!/usr/bin/env bash
# NABLA's remaining measurements (issue #18, point 5), written 2026-12-07 (round 2, session 9). One script
# for every call of a session, as gpu_session_34.sh: each call runs the next steps that fit its DEADLINE and
# remembers on the machine what ran, so the same command repeated on the warm machine goes on where the last
# one stopped (a cold machine starts over). Each call's $OUT holds everything measured so far.
#
#   K5TUNE_GIT_SHA=<commit sent> DEADLINE=570 bash benchmarks/sessions/gpu_session_35.sh   # until "all done"
#
# What changed since session 8: torch's heuristic tiling narrowed to NABLA's 64-token blocks now takes 4 warps
# (autotuning's choice at that tile) instead of the heuristic's 8 (nabla.clamp_flex_tiles), which is what
# made it 2.84 s a Lite 10 s step slower than autotuning. Heuristic tiles compile inside whole blocks, where
# autotuned ones did not, and compiled blocks were 15 % faster than eager ones at the same tiles (session 7).
#
# The steps, most wanted first (NEED: what the step is expected to take, compile included; a step starts only
# when NEED fits before DEADLINE, and is cut at LIMIT or the deadline):
#  1 lite-nabla-ch   Lite 10 s 512x768x241 NABLA 10 % + STA, compiled blocks, heuristic tiles (3x dense: <= 5.89 s
#                    on the H100 of session 8)
#  2 lite-dense      the dense step, same card
#  3 pro-hd-nabla    Pro 768x1280x61 NABLA, compiled blocks, heuristic tiles, activation offload (target >= 2.5x
#                    dense; eager blocks with autotuned tiles: 1.72x in session 8)
#  4 pro-hd-dense    Pro 768x1280x61 dense, activation offload, one timed step
#  5 pro-nabla       Pro 512x768x61 NABLA, the same build (target: no slower than dense, <= 48 GiB)
#  6 pro-dense       Pro 512x768x61 dense
#  6b vae-241       the VAE encode of a 10 s clip, 512x768x241 (plain, patch conv, tiling): the estimate predicts it
#                    at the 61-frame peak + 0.4 GiB since 2026-12-08 (17-frame temporal tiles), unmeasured
#  7 train           `k5tune train` on the full-size Lite 10 s transformer (its defaults), and the bench step
#                    at its shape of the same build (target: within 10 %)
#  8 profile         where the Pro HD NABLA step's time goes, compiled blocks (profile_step.py)
#  9 lite-nabla-eh   the same Lite NABLA step with eager blocks, heuristic tiles (the warps' effect alone:
#                    9.63 s with 8 warps in session 7)
# Ran 2026-12-08 (session 9, one H100, benchmarks/results/2026-12-08-s9-h100.md): step 1 (5.570 s, 3.18x the
# dense step of the same machine, 17.688 s, run by hand after it). Compiled blocks with heuristic tiles are
# the default since, so the later steps measure that build (the scenarios name it) and `train` runs it.
set -u
source benchmarks/sessions/gpu_lib.sh
start_session
# On an H100 the dense baselines of session 8 stand (another H100 machine: Lite 10 s dense 17.675 s, and 17.66 s
# on a third in session 7; Pro HD dense 32.491 s): a short device window goes to what is new. SKIP="" reruns them.
if [[ -z ${SKIP+x} ]] && nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H100; then
  SKIP="lite-nabla-ch lite-dense pro-hd-dense"  # (steps 1 and 2 ran in session 9)
fi
resume_steps /tmp/k5s35 ${SKIP-}

# The Lite 10 s NABLA build measured fastest (session 9: compiled blocks, heuristic tiles; the default since)
faster_flags() { echo "--flex-tiling heuristic --compile-blocks"; }

# where the Pro HD NABLA step's time goes (the target the Lite build's speed-up may still miss there)
profile() {
  timeout $BENCH_TIMEOUT python3 benchmarks/tools/profile_step.py --flavour t2v-pro-sft-5s-hd --resolution 768x1280 \
    --offload-activations --nabla-density 0.1 --modulation-bf16 --warmup 1 $(faster_flags) > $STATE/profile.json \
    2>> $OUT/err.txt || { tail -5 $OUT/err.txt; return 1; }
  head -c 3000 $STATE/profile.json
}

vae241() {
  timeout $BENCH_TIMEOUT python3 benchmarks/tools/vae_encode.py --frames 241 --repeats 1 | tee $STATE/vae241.jsonl
}

train() {
  FLAVOUR=t2v-lite-sft-10s train_lite_fullsize && cp $OUT/train.txt $OUT/train_summary.json $STATE/ \
    && b --scenario lite-10s-61f-compiled
}

run_steps() {
  step lite-nabla-ch 170 300 b --scenario lite-10s-nabla-compiled-heuristic || return
  step lite-dense 120 170 b --scenario lite-10s-dense-1 || return
  step pro-hd-nabla 260 360 b --scenario pro-hd-nabla-compiled-heuristic || return
  step pro-hd-dense 190 280 b --scenario pro-hd-dense-1 || return
  step pro-nabla 190 270 b --scenario pro-nabla-compiled-heuristic || return
  step pro-dense 170 240 b --scenario pro-dense || return
  step vae-241 90 150 vae241 || return
  step train 280 330 train || return
  step profile 280 360 profile || return
  step lite-nabla-eh 130 220 b --scenario lite-10s-nabla-heuristic || return
  echo "all done"
}
run_steps
cp $STATE/tries.txt $OUT/
for f in profile.json train.txt train_summary.json vae241.jsonl; do [[ -f $STATE/$f ]] && cp $STATE/$f $OUT/; done
exit 0
