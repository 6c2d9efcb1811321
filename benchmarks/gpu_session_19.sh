#!/usr/bin/env bash
# Third session: `k5tune train` with the guide's TREAD route at full Lite size (random weights, cached
# data, validation off, blocks compiled): its steady-state step against the bench figure of session 17.
set -u
source benchmarks/gpu_lib.sh; install_wheels
W=/tmp/k5run; rm -rf $W; mkdir -p $W/config
python3 benchmarks/make_fullsize_model.py $W/model > /dev/null 2> $OUT/err.txt || { tail -5 $OUT/err.txt; exit 1; }
python3 -c "from k5tune.data.synthetic import write_demo_dataset; write_demo_dataset('$W/datasets/videos', n=2, frames=64, width=768, height=512)"
cat > $W/config/config.json <<JSON
{"pretrained_model_name_or_path": "$W/model", "output_dir": "$W/output", "report_to": "none",
 "max_train_steps": 14, "tread_config": {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 2, "end_layer_idx": -2}]}, "lora_rank": 32, "lora_alpha": 32, "learning_rate": 1e-5, "checkpointing_steps": 1000,
 "lora_target_modules": ["to_query", "to_key", "to_value", "out_layer", "feed_forward"], "disable_validation": true}
JSON
cat > $W/config/multidatabackend.json <<JSON
[{"id": "clips", "dataset_type": "video", "instance_data_dir": "$W/datasets/videos", "resolution": 512,
  "video": {"num_frames": 61}}, {"id": "text", "dataset_type": "text_embeds", "default": true, "cache_dir": "$W/cache/text"}]
JSON
(cd $W && python3 -m k5tune.cli train > $OUT/train.txt 2>> $OUT/err.txt) || { tail -8 $OUT/err.txt; }
tail -8 $OUT/train.txt
python3 - <<PY | tee $OUT/train_summary.json
import csv, json, statistics
rows = list(csv.DictReader(open("$W/output/metrics.csv")))
steady = [float(r["step_seconds"]) for r in rows[6:]]
print(json.dumps({"train_steady_step_s_median": statistics.median(steady), "steps": len(rows),
                  "peak_gib": max(float(r["peak_gib"]) for r in rows), "steady_steps": steady}))
PY
