#!/usr/bin/env bash
# The collector's checks on the GPU machine (docs/gpu.md), after `scripts/gpu_tests.sh build` here.
#   scripts/profile_checks.sh torch      `lumen profile` against torch.profiler on the same PyTorch
#                                        workload (scripts/collector_vs_torch.py): kernel counts per
#                                        name exact, total kernel time within 2%
#   scripts/profile_checks.sh overhead   lumen's throughput benchmark untraced, under graph tracing
#                                        and under node tracing: throughput, kernels collected,
#                                        trace size per million kernels, merge time
# Env: MODEL (default llama-3.1-8b), REQUESTS (default 3000), MAX_BATCH (default 512). Logs and
# traces go to /tmp/profile-checks; summaries to stdout and $OUT/profile_checks.log.
set -euo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LUMEN_CACHE_DIR=${LUMEN_CACHE_DIR:-/tmp/lumen-cache}
L=${LUMEN_BIN:-$PWD/gpu-tests/lumen}
W=/tmp/profile-checks
mkdir -p "$W"
LOG=${OUT:-/tmp}/profile_checks.log

case "${1:-}" in
torch)
  rm -f "$W"/torch.json "$W"/window.lumen "$W"/whole.lumen
  python3 scripts/collector_vs_torch.py torch "$W/torch.json" >>"$LOG" 2>&1
  $L profile -o "$W/window" -c cudaProfilerApi -- python3 scripts/collector_vs_torch.py run 2>&1 | tee -a "$LOG"
  $L profile -o "$W/whole" -- python3 scripts/collector_vs_torch.py run 2>&1 | tee -a "$LOG"
  $L trace info "$W/whole.lumen" 2>&1 | tee -a "$LOG"
  python3 scripts/collector_vs_torch.py compare "$W/torch.json" "$W/window.lumen" 2>&1 | tee -a "$LOG"
  ;;
overhead)
  MODEL=${MODEL:-llama-3.1-8b}
  REQUESTS=${REQUESTS:-3000}
  MAX_BATCH=${MAX_BATCH:-512}
  $L bench prepare-dataset --model "$MODEL" --output "$W/data.jsonl" token-norm-dist --num-requests "$REQUESTS" \
    --input-mean 128 --input-stdev 0 --output-mean 128 --output-stdev 0
  bench=(bench throughput --device cuda --model "$MODEL" --dataset "$W/data.jsonl" --eos-id -1 --max-batch-size "$MAX_BATCH")
  rm -f "$W"/graph.lumen "$W"/node.lumen
  $L "${bench[@]}" --report-json "$W/base.json" >>"$LOG" 2>&1
  $L profile -o "$W/graph" --cuda-graph-trace graph -- $L "${bench[@]}" --report-json "$W/graph.json" >>"$LOG" 2>&1
  $L profile -o "$W/node" --cuda-graph-trace node -- $L "${bench[@]}" --report-json "$W/node.json" >>"$LOG" 2>&1
  grep -h "merged" "$LOG" | tail -2
  python3 - "$W" "$MODEL" "$REQUESTS" "$MAX_BATCH" <<'PY' | tee -a "$LOG"
import json, os, sqlite3, sys
w, model, requests, batch = sys.argv[1:]
def tok_s(name):
    def find(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "system_output_throughput_tok_s":
                    return v
                r = find(v)
                if r is not None:
                    return r
    return find(json.load(open(f"{w}/{name}.json")))
base = tok_s("base")
print(f"{model}, {requests} requests 128/128, max batch {batch}")
print(f"{'run':<10} {'tok/s':>10} {'overhead':>9} {'kernels':>10} {'graphs':>8} {'api calls':>10} {'trace MB':>9} {'MB/1M kernels':>14}")
print(f"{'untraced':<10} {base:>10.1f}")
for mode in ["graph", "node"]:
    t = tok_s(mode)
    db = sqlite3.connect(f"{w}/{mode}.lumen")
    kernels = db.execute("SELECT count(*) FROM gpu_ops WHERE kind = 'kernel'").fetchone()[0]
    graphs = db.execute("SELECT count(*) FROM gpu_ops WHERE kind = 'graph'").fetchone()[0]
    api = db.execute("SELECT count(*) FROM api_calls").fetchone()[0]
    mb = os.path.getsize(f"{w}/{mode}.lumen") / 1e6
    print(f"{mode:<10} {t:>10.1f} {100 * (base - t) / base:>8.2f}% {kernels:>10} {graphs:>8} {api:>10} {mb:>9.1f} {mb / max(kernels, 1) * 1e6:>14.1f}")
PY
  ;;
*)
  echo "usage: scripts/profile_checks.sh torch|overhead" >&2
  exit 2
  ;;
esac
