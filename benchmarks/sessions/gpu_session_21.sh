#!/usr/bin/env bash
# Third session, last minutes: where the time of the compiled Pro step goes (for the next round of #7).
set -u
source benchmarks/sessions/gpu_lib.sh
install_wheels
timeout 190 python3 benchmarks/tools/profile_step.py --flavour t2v-pro-sft-5s-hd --warmup 1 > $OUT/profile_pro.json 2>> $OUT/err.txt \
  || tail -3 $OUT/err.txt
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r[k] for k in ('step_wall_s','step_cpu_enqueue_s','gpu_busy_s','gpu_idle_share_of_wall','kernel_launches','by_kind_ms')}); [print(k) for k in r['top_kernels'][:12]]" $OUT/profile_pro.json
