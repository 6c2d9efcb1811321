# Shared by the GPU session scripts (`source benchmarks/gpu_lib.sh` from the repository root, on the
# device machine, with the wheels carried in .whl/).

# The carried wheels (diffusers, pydantic, av, torchao, ...) into /tmp/site, first on the path.
install_wheels() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
}

# b ARGS...: one `k5tune bench ARGS` run; its JSON report is appended to $OUT/bench.jsonl and its step
# times and peaks printed. BENCH_TIMEOUT (seconds) bounds a run; BENCH_ERR collects stderr.
b() {
  local err=${BENCH_ERR:-$OUT/err.txt}
  ${BENCH_TIMEOUT:+timeout $BENCH_TIMEOUT} python3 -m k5tune.cli bench "$@" --output /tmp/b.json > /dev/null 2>> "$err" \
    || tail -3 "$err"
  python3 -c "import json,sys; r=json.load(open('/tmp/b.json')); open('$OUT/bench.jsonl','a').write(json.dumps(r)+'\n'); print(sys.argv[1:], {k: (round(v['step_s'],3), round(v.get('peak_gib', 0),2)) for k,v in r.items() if isinstance(v, dict) and 'step_s' in v}, r.get('base_precision'))" "$@"
  rm -f /tmp/b.json
}
