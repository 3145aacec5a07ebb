#!/usr/bin/env bash
# Serving on the GPU machine (docs/gpu.md), after `scripts/gpu_tests.sh build`, carrying gpu-tests:
#   1. ISL/OSL 128/128: `lumen bench throughput` and `lumen bench serve --request-rate inf
#      --max-concurrency 256 --ignore-eos` against `lumen serve`, over the same requests and engine
#      limits, and the ratio of their output throughputs (the server should keep at least 90%);
#   2. TTFT and TPOT percentiles at 1, 8 and 32 requests per second;
#   3. TensorRT-LLM's published serving shape, ISL 467 / OSL 256, at 32 QPS and unlimited;
# and, before the server starts, `lumen bench throughput --streaming` over the 128/128 requests
# (TTFT and ITL from the streamed chunks, and the caller-side overhead beside the plain run's).
# MODEL (default llama-3.1-8b), MAX_BATCH (256), MAX_TOKENS (8192), PORT (8123), PROMPTS (2048: the
# requests of each dataset and unlimited-rate run), RATE_SECONDS (60: how long each fixed-rate run
# offers requests); logs and results
# go to $OUT (default /tmp/serve-gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LUMEN_CACHE_DIR=${LUMEN_CACHE_DIR:-/tmp/lumen-cache}
LUMEN=${LUMEN_BIN:-$PWD/gpu-tests/lumen}
OUT=${OUT:-/tmp/serve-gpu}
MODEL=${MODEL:-llama-3.1-8b}
MAX_BATCH=${MAX_BATCH:-256}
MAX_TOKENS=${MAX_TOKENS:-8192}
PORT=${PORT:-8123}
RATE_SECONDS=${RATE_SECONDS:-60}
PROMPTS=${PROMPTS:-2048}
URL=http://127.0.0.1:$PORT
mkdir -p "$OUT"
limits=(--device cuda --model "$MODEL" --max-batch-size "$MAX_BATCH" --max-num-tokens "$MAX_TOKENS")

dataset() { # NAME REQUESTS ISL OSL
  "$LUMEN" bench prepare-dataset --model "$MODEL" --output "$OUT/$1.jsonl" token-norm-dist \
    --num-requests "$2" --input-mean "$3" --input-stdev 0 --output-mean "$4" --output-stdev 0
}
dataset short "$PROMPTS" 128 128
dataset trtllm "$PROMPTS" 467 256

"$LUMEN" bench throughput "${limits[@]}" --dataset "$OUT/short.jsonl" --concurrency "$MAX_BATCH" \
  --report-json "$OUT/throughput.json" | tee "$OUT/throughput.txt"
"$LUMEN" bench throughput "${limits[@]}" --dataset "$OUT/short.jsonl" --concurrency "$MAX_BATCH" --streaming \
  --report-json "$OUT/throughput_streaming.json" | tee "$OUT/throughput_streaming.txt"

"$LUMEN" serve "${limits[@]}" --port "$PORT" >"$OUT/serve.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null || true' EXIT
until curl -sf "$URL/health" >/dev/null; do
  kill -0 $server 2>/dev/null || { cat "$OUT/serve.log"; exit 1; }
  sleep 1
done

serve_bench() { # RESULT DATASET PROMPTS RATE [more options]
  local result=$1 data=$2 prompts=$3 rate=$4
  shift 4
  "$LUMEN" bench serve --base-url "$URL" --dataset "$OUT/$data.jsonl" --num-prompts "$prompts" --request-rate "$rate" \
    --ignore-eos --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,99 \
    --save-result --result-dir "$OUT" --result-filename "$result.json" "$@" | tee "$OUT/$result.txt"
}
serve_bench serve_inf short "$PROMPTS" inf --max-concurrency 256
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
offline = json.load(open(f"{out}/throughput.json"))["performance"]["system_output_throughput_tok_s"]
online = json.load(open(f"{out}/serve_inf.json"))["output_throughput"]
print(f"output tok/s: bench throughput {offline:,.1f}, lumen serve {online:,.1f}, ratio {online / offline:.3f}")
PY
for rate in 1 8 32; do
  serve_bench "serve_rate$rate" short $((rate * RATE_SECONDS < PROMPTS ? rate * RATE_SECONDS : PROMPTS)) "$rate"
done
serve_bench trtllm_32qps trtllm $((32 * RATE_SECONDS < PROMPTS ? 32 * RATE_SECONDS : PROMPTS)) 32
serve_bench trtllm_inf trtllm "$PROMPTS" inf
kill -TERM $server
wait $server
trap - EXIT

echo "== $MODEL on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
for name in ("throughput", "throughput_streaming"):
    r = json.load(open(f"{out}/{name}.json"))
    perf, lumen = r["performance"], r.get("lumen", {})
    stream = r.get("streaming_metrics") or {}
    ttft, itl = stream.get("avg_ttft_ms"), stream.get("avg_tpot_ms")
    over = lumen.get("caller_overhead_ms", {}).get("average")
    print(f"{name:22} {perf['system_output_throughput_tok_s']:10,.1f} out tok/s"
          + (f"  TTFT avg {ttft:.1f} ms  TPOT avg {itl:.2f} ms" if ttft is not None else "")
          + (f"  caller overhead avg {over:.3f} ms" if over is not None else ""))
print(f"{'run':22} {'out tok/s':>10} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'TPOT p99':>9} {'ITL p50':>8}")
for name in ("serve_inf", "serve_rate1", "serve_rate8", "serve_rate32", "trtllm_32qps", "trtllm_inf"):
    r = json.load(open(f"{out}/{name}.json"))
    print(f"{name:22} {r['output_throughput']:10,.1f} {r['median_ttft_ms']:9.1f} {r['p99_ttft_ms']:9.1f}"
          f" {r['median_tpot_ms']:9.2f} {r['p99_tpot_ms']:9.2f} {r['median_itl_ms']:8.2f}")
PY
