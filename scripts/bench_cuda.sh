#!/usr/bin/env bash
# CUDA benchmarks on the GPU machine (docs/benchmarks.md): lumen's throughput and latency on the
# Llama-3.1-8B shape in bf16, ISL/OSL 128/128, and the Hugging Face transformers peer in the same
# run. Expects `lumen` at $LUMEN_BIN (default gpu-tests/lumen, from scripts/gpu_tests.sh build) and
# the peer script at peers/hf_generate.py. Results go to $OUT (default /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LUMEN_CACHE_DIR=${LUMEN_CACHE_DIR:-/tmp/lumen-cache}
L=${LUMEN_BIN:-$PWD/gpu-tests/lumen}
OUT=${OUT:-/tmp}
MODEL=${MODEL:-llama-3.1-8b}
REQUESTS=${REQUESTS:-3000}
MAX_BATCH=${MAX_BATCH:-512}
MAX_TOKENS=${MAX_TOKENS:-8192}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
$L bench prepare-dataset --model "$MODEL" --output "$OUT/data.jsonl" token-norm-dist --num-requests "$REQUESTS" \
  --input-mean 128 --input-stdev 0 --output-mean 128 --output-stdev 0
$L bench prepare-dataset --model "$MODEL" --output "$OUT/latency.jsonl" token-norm-dist --num-requests 8 \
  --input-mean 128 --input-stdev 0 --output-mean 128 --output-stdev 0
if [[ "${SKIP_THROUGHPUT:-0}" != 1 ]]; then
  $L bench throughput --device cuda --model "$MODEL" --dataset "$OUT/data.jsonl" --eos-id -1 --max-batch-size "$MAX_BATCH" \
    --max-num-tokens "$MAX_TOKENS" --report-json "$OUT/throughput.json" --iteration-log "$OUT/throughput_iterations.jsonl" \
    ${EXTRA:-} 2>&1 | tee "$OUT/throughput.txt"
fi
if [[ "${SKIP_LATENCY:-0}" != 1 ]]; then
  $L bench latency --device cuda --model "$MODEL" --dataset "$OUT/latency.jsonl" --eos-id -1 \
    --report-json "$OUT/latency.json" ${EXTRA:-} 2>&1 | tee "$OUT/latency.txt"
fi
if [[ "${SKIP_PEER:-0}" != 1 ]]; then
  python3 peers/hf_generate.py --model "$MODEL" --batch 1 128 2>&1 | grep '^{' | tee "$OUT/peer.jsonl"
fi
echo "== summary ($MODEL, ISL/OSL 128/128)"
grep -h "Total Output Throughput\|Request Throughput\|Average time-per-output-token" "$OUT"/throughput.txt "$OUT"/latency.txt 2>/dev/null || true
cat "$OUT/peer.jsonl" 2>/dev/null || true
