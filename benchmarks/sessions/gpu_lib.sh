# Shared by the GPU session scripts (`source benchmarks/sessions/gpu_lib.sh` from the repository root, on the
# device machine, with the wheels carried in .whl/).

# The carried wheels (diffusers, pydantic, av, torchao, ...) into /tmp/site, first on the path.
install_wheels() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
}

# start_session: the wheels installed, $OUT/bench.jsonl emptied, the card and the versions printed.
start_session() {
  install_wheels
  : > $OUT/bench.jsonl
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
  # the machine's .git is not the tree that travelled: the device command names the commit it sent
  [[ -n "${K5TUNE_GIT_SHA:-}" ]] || echo "K5TUNE_GIT_SHA unset: rows will name this copy's stale HEAD (-dirty)"
  python3 -c "from k5tune.bench.rows import code_version; print('code', code_version())"
}

# b ARGS...: one `k5tune bench ARGS` run; its JSON report is appended to $OUT/bench.jsonl, its row (with
# the scenario's name when ARGS has --scenario) to $OUT/rows.jsonl, and its step times, peaks and first (compiling) step printed. BENCH_TIMEOUT (seconds) bounds a run; BENCH_ERR collects stderr.
b() {
  local err=${BENCH_ERR:-$OUT/err.txt}
  ${BENCH_TIMEOUT:+timeout $BENCH_TIMEOUT} python3 -m k5tune.cli bench "$@" --output /tmp/b.json --results $OUT/rows.jsonl \
    > /dev/null 2>> "$err"
  local rc=$?
  if (( rc == 124 )); then echo "b $*: cut by BENCH_TIMEOUT=${BENCH_TIMEOUT:-}s (no report)"; return 1; fi
  if (( rc != 0 )); then tail -3 "$err"; fi
  [[ -f /tmp/b.json ]] || { echo "b $*: no report (exit $rc)"; return 1; }
  python3 -c "import json,sys; r=json.load(open('/tmp/b.json')); open('$OUT/bench.jsonl','a').write(json.dumps(r)+'\n'); print(sys.argv[1:], {k: (round(v['step_s'],3), round(v.get('peak_gib', 0),2), (v.get('warmup_s_all') or [None])[0]) for k,v in r.items() if isinstance(v, dict) and 'step_s' in v}, r.get('base_precision'), (r.get('attention') or {}).get('mask_density'))" "$@"
  rm -f /tmp/b.json
}

# train_lite_fullsize [EXTRA_CONFIG_JSON]: `k5tune train` for 14 steps on the full-size Lite transformer
# (random weights, small encoders: make_fullsize_model.py) with two cached 768x512 clips, validation off,
# rank 32 on attention + feed-forward; EXTRA_CONFIG_JSON (e.g. ', "tread_config": {...}') is added to
# config.json; FLAVOUR (default t2v-lite-sft-5s) picks the transformer config (a 10 s flavour: NABLA).
# Writes $OUT/train.txt and $OUT/train_summary.json (median step of steps 7-14, peak).
train_lite_fullsize() {
  local W=/tmp/k5run
  rm -rf $W; mkdir -p $W/config
  local extra=${1:-}
  python3 benchmarks/tools/make_fullsize_model.py $W/model --flavour ${FLAVOUR:-t2v-lite-sft-5s} > /dev/null 2>> $OUT/err.txt || { tail -5 $OUT/err.txt; return 1; }
  python3 -c "from k5tune.data.synthetic import write_demo_dataset; write_demo_dataset('$W/datasets/videos', n=2, frames=64, width=768, height=512)"
  cat > $W/config/config.json <<JSON
{"pretrained_model_name_or_path": "$W/model", "output_dir": "$W/output", "report_to": "none",
 "max_train_steps": 14, "lora_rank": 32, "lora_alpha": 32, "learning_rate": 1e-5, "checkpointing_steps": 1000,
 "lora_target_modules": ["to_query", "to_key", "to_value", "out_layer", "feed_forward"], "disable_validation": true $extra}
JSON
  cat > $W/config/multidatabackend.json <<JSON
[{"id": "clips", "dataset_type": "video", "instance_data_dir": "$W/datasets/videos", "resolution": 512,
  "video": {"num_frames": 61}}, {"id": "text", "dataset_type": "text_embeds", "default": true, "cache_dir": "$W/cache/text"}]
JSON
  (cd $W && python3 -m k5tune.cli train > $OUT/train.txt 2>> $OUT/err.txt) || tail -8 $OUT/err.txt
  tail -8 $OUT/train.txt
  python3 - <<PY | tee $OUT/train_summary.json
import csv, json, statistics
rows = list(csv.DictReader(open("$W/output/metrics.csv")))
steady = [float(r["step_seconds"]) for r in rows[6:]]
print(json.dumps({"train_steady_step_s_median": statistics.median(steady), "steps": len(rows),
                  "peak_gib": max(float(r["peak_gib"]) for r in rows), "steady_steps": steady}))
PY
}

# fastest_nabla_flags [FRAMES]: the build flags (--flex-tiling, --compile-blocks) of the fastest NABLA step in
# $OUT/bench.jsonl, of clips of FRAMES frames when given ("" when none ran).
fastest_nabla_flags() {
  python3 - "$OUT/bench.jsonl" "${1:-}" <<'PY'
import json, sys
best, frames = None, sys.argv[2]
for line in open(sys.argv[1]):
    r = json.loads(line)
    if (r.get("attention") or {}).get("attention") != "nabla" or "ours" not in r:
        continue
    if frames and r.get("frames") != int(frames):
        continue
    if best is None or r["ours"]["step_s"] < best["ours"]["step_s"]:
        best = r
if best is not None:
    plan = best["plan"]
    print(f"--flex-tiling {plan.get('flex_tiling') or 'autotune'}" + (" --compile-blocks" if plan.get("compile_blocks") else ""))
PY
}

# Resumable sessions: one script repeated on the warm machine goes on where the last call stopped.
# resume_steps DIR [NAME...]: DIR on the machine keeps what ran (tries.txt) and what was measured (bench.jsonl,
# rows.jsonl, copied into $OUT); the NAMEs count as done (what earlier sessions measured).
resume_steps() {
  STATE=$1; shift
  mkdir -p $STATE
  touch $STATE/bench.jsonl $STATE/rows.jsonl $STATE/tries.txt
  for name in "$@"; do
    grep -qx "done $name" $STATE/tries.txt || echo "done $name" >> $STATE/tries.txt
  done
  cp $STATE/bench.jsonl $OUT/bench.jsonl
  cp $STATE/rows.jsonl $OUT/rows.jsonl
}

fits() { (( SECONDS + $1 <= ${DEADLINE:-570} )) || { echo "next call: $2 (needs ${1}s)"; return 1; }; }

# step NAME NEED LIMIT COMMAND...: run COMMAND, cut at LIMIT or the deadline (BENCH_TIMEOUT), unless NAME is
# done or was tried twice; false (ending this call) when NEED seconds are not left before DEADLINE.
step() {
  local name=$1 need=$2 limit=$3; shift 3
  grep -qx "done $name" $STATE/tries.txt && return 0
  (( $(grep -cx "try $name" $STATE/tries.txt) >= 2 )) && { echo "skipped: $name (cut twice)"; return 0; }
  fits $need $name || return 1
  local left=$(( ${DEADLINE:-570} - SECONDS ))
  echo "try $name" >> $STATE/tries.txt
  echo "== $name (limit $(( limit < left ? limit : left ))s)"
  BENCH_TIMEOUT=$(( limit < left ? limit : left )) "$@" && echo "done $name" >> $STATE/tries.txt
  cp $OUT/bench.jsonl $OUT/rows.jsonl $STATE/  # (kept after each step: a call killed later loses nothing)
  return 0
}
