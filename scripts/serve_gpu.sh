#!/usr/bin/env bash
# Serving on the GPU machine (docs/gpu.md), after `scripts/gpu_tests.sh build`, carrying gpu-tests:
#   1. ISL/OSL 128/128: `lumen bench throughput` and `lumen bench serve --request-rate inf
#      --max-concurrency 256 --ignore-eos` against `lumen serve`, over the same requests and engine
#      limits, and the ratio of their output throughputs (the server should keep at least 90%);
#   2. TTFT and TPOT percentiles at 1, 8 and 32 requests per second;
#   3. TensorRT-LLM's published serving shape, ISL 467 / OSL 256, at 32 QPS and unlimited.
# MODEL (default llama-3.1-8b), MAX_BATCH (256), MAX_TOKENS (8192), PORT (8123); logs and results
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
URL=http://127.0.0.1:$PORT
mkdir -p "$OUT"
limits=(--device cuda --model "$MODEL" --max-batch-size "$MAX_BATCH" --max-num-tokens "$MAX_TOKENS")

dataset() { # NAME REQUESTS ISL OSL
  "$LUMEN" bench prepare-dataset --model "$MODEL" --output "$OUT/$1.jsonl" token-norm-dist \
    --num-requests "$2" --input-mean "$3" --input-stdev 0 --output-mean "$4" --output-stdev 0
}
dataset short 2048 128 128
dataset trtllm 2048 467 256

"$LUMEN" bench throughput "${limits[@]}" --dataset "$OUT/short.jsonl" --concurrency "$MAX_BATCH" \
  --report-json "$OUT/throughput.json" | tee "$OUT/throughput.txt"

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
serve_bench serve_inf short 2048 inf --max-concurrency 256
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
offline = json.load(open(f"{out}/throughput.json"))["performance"]["system_output_throughput_tok_s"]
online = json.load(open(f"{out}/serve_inf.json"))["output_throughput"]
print(f"output tok/s: bench throughput {offline:,.1f}, lumen serve {online:,.1f}, ratio {online / offline:.3f}")
PY
for rate in 1 8 32; do
  serve_bench "serve_rate$rate" short $((rate * 60 < 2048 ? rate * 60 : 2048)) "$rate"
done
serve_bench trtllm_32qps trtllm 1024 32
serve_bench trtllm_inf trtllm 2048 inf
kill -TERM $server
wait $server
trap - EXIT
