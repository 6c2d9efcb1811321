#!/usr/bin/env bash
# Data-parallel `k5tune train` at full Lite size on 2 GPUs against 1 GPU (same per-GPU batch).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/gpus.txt
W=/tmp/k5run; mkdir -p $W/config
python3 benchmarks/tools/make_fullsize_model.py $W/model > /dev/null 2> $OUT/err.txt || { tail -5 $OUT/err.txt; exit 1; }
python3 -c "from k5tune.data.synthetic import write_demo_dataset; write_demo_dataset('$W/datasets/videos', n=4, frames=64, width=768, height=512)"
cat > $W/config/multidatabackend.json <<JSON
[{"id": "clips", "dataset_type": "video", "instance_data_dir": "$W/datasets/videos", "resolution": 512,
  "video": {"num_frames": 61}}, {"id": "text", "dataset_type": "text_embeds", "default": true, "cache_dir": "$W/cache/text"}]
JSON
for n in 1 2; do
cat > $W/config/config.json <<JSON
{"pretrained_model_name_or_path": "$W/model", "output_dir": "$W/output$n", "report_to": "none", "num_processes": $n,
 "max_train_steps": 14, "lora_rank": 32, "lora_alpha": 32, "learning_rate": 1e-5, "checkpointing_steps": 1000,
 "lora_target_modules": ["to_query", "to_key", "to_value", "out_layer", "feed_forward"], "disable_validation": true}
JSON
(cd $W && python3 -m k5tune.cli train > $OUT/train$n.txt 2>> $OUT/err.txt) || tail -8 $OUT/err.txt
python3 - <<PY | tee -a $OUT/summary.jsonl
import csv, json, statistics
rows = list(csv.DictReader(open("$W/output$n/metrics.csv")))
steady = [float(r["step_seconds"]) for r in rows[6:]]
print(json.dumps({"gpus": $n, "clips_per_step": $n, "steady_step_s_median": statistics.median(steady),
                  "clips_per_s": $n / statistics.median(steady), "peak_gib_rank0": max(float(r["peak_gib"]) for r in rows)}))
PY
done
python3 -c "import json; a,b=[json.loads(l) for l in open('$OUT/summary.jsonl')]; print('throughput ratio 2 GPUs / 1 GPU:', round(b['clips_per_s']/a['clips_per_s'],3))"
