#!/usr/bin/env bash
# FSDP2: `k5tune train` with the full-size Pro transformer (random weights) on 2 GPUs, full checkpointing,
# with and without offload_activations; steady-state step time and per-GPU peak (rank 0) from metrics.csv.
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/gpus.txt
W=/tmp/k5pro; mkdir -p $W/config
python3 benchmarks/tools/make_fullsize_model.py $W/model --flavour t2v-pro-sft-5s-hd 2> $OUT/err.txt | tail -1 || { tail -5 $OUT/err.txt; exit 1; }
python3 -c "from k5tune.data.synthetic import write_demo_dataset; write_demo_dataset('$W/datasets/videos', n=4, frames=64, width=768, height=512)"
cat > $W/config/multidatabackend.json <<JSON
[{"id": "clips", "dataset_type": "video", "instance_data_dir": "$W/datasets/videos", "resolution": 512,
  "video": {"num_frames": 61}}, {"id": "text", "dataset_type": "text_embeds", "default": true, "cache_dir": "$W/cache/text"}]
JSON
run() {  # $1 name, $2 extra JSON keys
cat > $W/config/config.json <<JSON
{"pretrained_model_name_or_path": "$W/model", "model_flavour": "t2v-pro-sft-5s-hd", "output_dir": "$W/$1",
 "report_to": "none", "num_processes": 2, "fsdp_enable": true, "gradient_checkpointing_policy": "full",
 "max_train_steps": 7, "lora_rank": 32, "lora_alpha": 32, "learning_rate": 1e-5, "checkpointing_steps": 4,
 "lora_target_modules": ["to_query", "to_key", "to_value", "out_layer", "feed_forward"], "disable_validation": true $2}
JSON
started=$(date +%s)
(cd $W && python3 -m k5tune.cli train > $OUT/train_$1.txt 2>> $OUT/err.txt) || tail -8 $OUT/err.txt
python3 - <<PY | tee -a $OUT/summary.jsonl
import csv, json, statistics, os
rows = list(csv.DictReader(open("$W/$1/metrics.csv")))
steady = [float(r["step_seconds"]) for r in rows[2:] if int(r["step"]) != 5]  # step 5 follows the checkpoint
print(json.dumps({"run": "$1", "gpus": 2, "clips_per_step": 2, "steps": len(rows), "steady_step_s_median": statistics.median(steady),
                  "step_s_all": [round(float(r["step_seconds"]), 3) for r in rows],
                  "peak_gib_rank0": max(float(r["peak_gib"]) for r in rows), "wall_s": $(date +%s) - $started,
                  "lora_mib": os.path.getsize("$W/$1/pytorch_lora_weights.safetensors") / 2**20}))
PY
grep -h "FSDP2" $OUT/train_$1.txt | head -1
}
run fsdp_full "${FIRST:-}"
[ -n "${ONLY_FIRST:-}" ] || run fsdp_full_actoffload ', "offload_activations": true'
