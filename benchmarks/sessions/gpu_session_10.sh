#!/usr/bin/env bash
# The whole `k5tune train` with all four components at full size (random weights): Qwen2.5-VL-7B,
# CLIP-L text, HunyuanVideo VAE and the Lite transformer, the shipped example config (the guide's
# settings: offload_during_startup) with vae_enable_patch_conv, three 768x512 clips of 64 frames,
# validation off, 8 steps. Prints the caching peak, the training peak and the step time; then times
# Qwen prompt encoding whole / streamed / streamed with prefetch (benchmarks/tools/text_encode_stream.py).
# Run with the wheels carried: carry [".whl"]. Writes $OUT/summary.jsonl, metrics.csv,
# dataset_report.json, train.txt, err.txt, text_encode.jsonl.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
: > $OUT/err.txt
fail() { echo "FAILED: $1"; tail -25 $OUT/err.txt; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/gpus.txt
W=/tmp/k5full; rm -rf $W; mkdir -p $W/config

# 1. The model folder: all four components full size, built on the GPU, saved in safetensors shards.
python3 benchmarks/tools/make_fullsize_model.py $W/model --full-components 2>> $OUT/err.txt | tee $OUT/model.json \
  || fail "building the full-size model"
df -h /tmp | tail -1

# 2. Three captioned 768x512 clips of 64 frames (24 fps), and the shipped example config with the
#    paths, 8 steps, validation off, no tracker (tensorboard is not installed here) and patch conv.
python3 - <<PY 2>> $OUT/err.txt || fail "writing the clips and the config"
import json
from k5tune.config.loading import EXAMPLES_DIR
from k5tune.data.synthetic import write_demo_dataset
write_demo_dataset("$W/datasets/videos", n=3, frames=64, fps=24.0, width=768, height=512)
config = json.loads((EXAMPLES_DIR / "config.json.example").read_text())
config.update(pretrained_model_name_or_path="$W/model", output_dir="$W/output", max_train_steps=8,
              disable_validation=True, report_to="none", vae_enable_patch_conv=True)
assert config["offload_during_startup"] is True
open("$W/config/config.json", "w").write(json.dumps(config, indent=2))
open("$W/config/multidatabackend.json", "w").write((EXAMPLES_DIR / "multidatabackend.json.example").read_text())
print(json.dumps({k: config[k] for k in ("model_flavour", "lora_rank", "offload_during_startup",
                                          "vae_enable_patch_conv", "gradient_checkpointing")}))
PY

# 3. k5tune train: caching (streamed Qwen, patch-conv VAE), then 8 LoRA steps.
started=$(date +%s)
(cd $W && python3 -m k5tune.cli train > $OUT/train.txt 2>> $OUT/err.txt) || fail "k5tune train"
echo "k5tune train: $(( $(date +%s) - started )) s"
grep -E "^(cache:|caching peak|text encoder:)" $OUT/train.txt
cp $W/output/metrics.csv $W/cache/dataset_report.json $OUT/ 2>/dev/null
python3 - <<PY | tee -a $OUT/summary.jsonl
import csv, json, statistics
caching = json.load(open("$W/cache/dataset_report.json"))["caching"]
rows = list(csv.DictReader(open("$W/output/metrics.csv")))
steps = [float(r["step_seconds"]) for r in rows]
training_peak = max(float(r["peak_gib"] or "nan") for r in rows)  # empty without a GPU
overall = max(caching["peak_gib"] or 0.0, training_peak)
print(json.dumps({"run": "full-size train", "caching_peak_gib": caching["peak_gib"],
                  "caching_text_peak_gib": caching["text_peak_gib"], "caching_latent_peak_gib": caching["latent_peak_gib"],
                  "text_encoder_streamed": caching["text_encoder_streamed"], "caching_seconds": caching["seconds"],
                  "training_peak_gib": training_peak, "steady_step_s_median": statistics.median(steps[3:]),
                  "first_step_s": steps[0], "steps": len(rows), "overall_peak_gib": overall,
                  "goal_13_gib_met": overall <= 13.0}))
PY
python3 -c "from k5tune.estimate import TrainingShape, caching_estimate; print('estimate:', caching_estimate(TrainingShape(), True, True))" \
  2>> $OUT/err.txt | tee -a $OUT/summary.jsonl

# 4. Qwen prompt encoding alone: whole on the GPU / streamed / streamed with side-stream prefetch.
[ -n "${SKIP_TEXT_TIMING:-}" ] || timeout 240 python3 benchmarks/tools/text_encode_stream.py $W/model 2>> $OUT/err.txt | tee $OUT/text_encode.jsonl \
  || { echo "text_encode_stream.py failed or timed out"; tail -8 $OUT/err.txt; }
