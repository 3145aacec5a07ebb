#!/usr/bin/env bash
# Mixture of experts on the GPU machine (docs/gpu.md), after `scripts/gpu_tests.sh build`, carrying
# gpu-tests: for MODEL (default qwen3-30b-a3b), REQUESTS (1000) of ISL/OSL 128/128, EOS ignored,
# `lumen bench throughput` with the gate skewed (`+zipf=$ZIPF`, default 1.2) and then with
# LUMEN_PERFECT_ROUTER=1, each traced, and `lumen analyze --compare` of the pair; then the same
# pair without the skew. Batch-1 decode of the unskewed model beside it, and with LONG=1 its
# throughput at 128/2048 (LONG_REQUESTS, default 256); with PEER=1 (the default when LONG=1) the
# transformers peer (peers/hf_generate.py, through scripts/peer_shapes.py for the DeepSeek shapes) at
# PEER_BATCHES (default "1 64 128"). The traces hold iterations WINDOW (default 40-79, steady
# decode; small enough to keep as the analyzer's fixtures). Logs, reports and traces go to $OUT
# (default /tmp/moe-gpu); a short table is printed last.
set -euo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LUMEN_CACHE_DIR=${LUMEN_CACHE_DIR:-/tmp/lumen-cache}
L=${LUMEN_BIN:-$PWD/gpu-tests/lumen}
OUT=${OUT:-/tmp/moe-gpu}
MODEL=${MODEL:-qwen3-30b-a3b}
REQUESTS=${REQUESTS:-1000}
ZIPF=${ZIPF:-1.2}
WINDOW=${WINDOW:-40-79}
mkdir -p "$OUT"
"$L" bench prepare-dataset --model "$MODEL" --output "$OUT/data.jsonl" token-norm-dist --num-requests "$REQUESTS" \
  --input-mean 128 --input-stdev 0 --output-mean 128 --output-stdev 0
"$L" bench prepare-dataset --model "$MODEL" --output "$OUT/latency.jsonl" token-norm-dist --num-requests 8 \
  --input-mean 128 --input-stdev 0 --output-mean 128 --output-stdev 0

run() { # NAME SPEC [ENV...]
  local name=$1 spec=$2
  shift 2
  env "$@" LUMEN_TRACE="$OUT/$name.lumen" LUMEN_PROFILE_START_STOP="$WINDOW" "$L" bench throughput --device cuda --model "$spec" --dataset "$OUT/data.jsonl" \
    --eos-id -1 --report-json "$OUT/$name.json" >"$OUT/$name.txt" 2>"$OUT/$name.log"
}
run skewed "$MODEL+zipf=$ZIPF"
run skewed_perfect "$MODEL+zipf=$ZIPF" LUMEN_PERFECT_ROUTER=1
run plain "$MODEL"
run plain_perfect "$MODEL" LUMEN_PERFECT_ROUTER=1
"$L" analyze "$OUT/skewed.lumen" --compare "$OUT/skewed_perfect.lumen" >"$OUT/compare_skewed.txt"
"$L" analyze "$OUT/plain.lumen" --compare "$OUT/plain_perfect.lumen" >"$OUT/compare_plain.txt"
"$L" bench latency --device cuda --model "$MODEL" --dataset "$OUT/latency.jsonl" --eos-id -1 >"$OUT/latency.txt" 2>&1
if [ "${LONG:-0}" = 1 ]; then
  "$L" bench prepare-dataset --model "$MODEL" --output "$OUT/long.jsonl" token-norm-dist --num-requests "${LONG_REQUESTS:-256}" \
    --input-mean 128 --input-stdev 0 --output-mean 2048 --output-stdev 0
  "$L" bench throughput --device cuda --model "$MODEL" --dataset "$OUT/long.jsonl" --eos-id -1 --report-json "$OUT/long.json" \
    >"$OUT/long.txt" 2>"$OUT/long.log"
fi
if [ "${PEER:-${LONG:-0}}" = 1 ]; then
  # The peer on the preset's shape, its layer count cut as `+layers=N` cuts lumen's (the
  # DeepSeek shapes through scripts/peer_shapes.py).
  layers=$(sed -n 's/.*+layers=\([0-9]*\).*/--layers \1/p' <<<"$MODEL")
  # shellcheck disable=SC2086
  python3 scripts/peer_shapes.py --model "${MODEL%%+*}" $layers --batch ${PEER_BATCHES:-1 64 128} 2>&1 | grep '^{' >"$OUT/peer.jsonl" || true
fi

ls -la "$OUT"/*.lumen
echo "== $MODEL, $REQUESTS requests of 128/128 on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
for name in skewed skewed_perfect plain plain_perfect; do
  printf '%-16s %s\n' "$name" "$(grep -h 'Total Output Throughput' "$OUT/$name.txt" | tr -s ' ')"
done
grep -h "Average time-per-output-token\|Total Output Throughput" "$OUT/latency.txt" | sed 's/^/batch 1          /'
if [ -f "$OUT/long.txt" ]; then
  printf '%-16s %s\n' "128/2048" "$(grep -h 'Total Output Throughput' "$OUT/long.txt" | tr -s ' ')"
fi
if [ -f "$OUT/peer.jsonl" ]; then
  sed 's/^/peer             /' "$OUT/peer.jsonl"
fi
for pair in skewed plain; do
  echo "-- compare ($pair):"
  grep -iE "perfect router|routing is not|load imbalance|busiest" "$OUT/compare_$pair.txt" | head -4
done
