#!/usr/bin/env bash
# CREPA (#19, point 7): Lite 512x768x61, the default plan (selective checkpointing, compiled blocks,
# modulation in bf16 as training stores it), the same step without and with CREPA (block 8, teacher
# features of dinov2_vitg14's width as the cache holds them: fp16, unit norm) in one process, one after
# the other on the same warm model; and the cache stage's feature cost per clip (random weights of the
# real vitg14 / vits14 size, bf16, 16 frames at 518 / 224). Then `k5tune train` itself with CREPA on the
# full-size Lite transformer (random DINOv2-giant weights in a local folder), against the same run without.
# Targets: step time +10 % at most, peak +1.5 GiB at most (crepa.step_time_increase, crepa.peak_increase_gib).
# `bash benchmarks/sessions/gpu_session_crepa.sh bench` (about 6 min) and `... train` (about 8 min) run the two parts
# apart, within one device command's 10 minutes; without an argument both run.
set -u
PART=${1:-all}
source benchmarks/sessions/gpu_lib.sh
install_wheels
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/gpus.txt
show_crepa() {
  python3 -c "import json; r=[json.loads(l) for l in open('$OUT/bench.jsonl')][-1]; print(json.dumps({k: r.get(k) for k in ('device', 'crepa', 'crepa_caching')}, indent=1))"
}
if [ "$PART" != train ]; then
: > $OUT/bench.jsonl
BENCH_TIMEOUT=330 b --modulation-bf16 --crepa dinov2_vitg14 --crepa-block 8 --steps 6 --warmup 3
show_crepa
BENCH_TIMEOUT=200 b --modulation-bf16 --crepa dinov2_vits14 --crepa-block 8 --steps 6 --warmup 3
show_crepa
fi
[ "$PART" = bench ] && exit 0
# k5tune train, 14 steps, with and without CREPA (vitg14-sized random encoder in a local folder)
python3 -c "
from transformers import Dinov2Config, Dinov2Model
from k5tune.models.dinov2 import RANDOM_CONFIGS
Dinov2Model(Dinov2Config(**RANDOM_CONFIGS['dinov2_vitg14'])).save_pretrained('/tmp/dinov2-giant-random')" 2>> $OUT/err.txt
train_lite_fullsize ''
cp $OUT/train_summary.json $OUT/train_summary_plain.json
train_lite_fullsize ', "crepa_enabled": true, "crepa_encoder": "/tmp/dinov2-giant-random"'
cp $OUT/train_summary.json $OUT/train_summary_crepa.json
cp /tmp/k5run/cache/dataset_report.json $OUT/dataset_report_crepa.json 2>/dev/null
python3 -c "import json; print(json.load(open('$OUT/dataset_report_crepa.json'))['caching'].get('crepa'))"
