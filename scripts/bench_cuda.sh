#!/usr/bin/env bash
# CUDA benchmarks on the GPU machine (docs/benchmarks.md): lumen's throughput and latency on the
# Llama-3.1-8B shape (MODEL), in bf16 or FP8 (PRECISION=bf16|fp8) with a bf16 or FP8 KV cache
# (KV_DTYPE=auto|fp8), ISL/OSL 128/128 (ISL, OSL),
# and the Hugging Face transformers peer in the same run; EXTRA adds flags to both lumen runs
# (EXTRA="--tp 4" splits the model over four GPUs). Without MAX_BATCH and MAX_TOKENS the
# throughput run takes the limits `bench throughput` tunes; with them, those. Expects `lumen` at $LUMEN_BIN (default gpu-tests/lumen, from scripts/gpu_tests.sh build) and
# the peer script at peers/hf_generate.py. Reports go to $OUT (default /tmp); run it with its output
# teed to a log there, e.g. `scripts/bench_cuda.sh 2>&1 | tee $OUT/bench.log`.
set -euo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LUMEN_CACHE_DIR=${LUMEN_CACHE_DIR:-/tmp/lumen-cache}
source scripts/nccl_env.sh
L=${LUMEN_BIN:-$PWD/gpu-tests/lumen}
OUT=${OUT:-/tmp}
MODEL=${MODEL:-llama-3.1-8b}
REQUESTS=${REQUESTS:-3000}
ISL=${ISL:-128}
OSL=${OSL:-128}
PRECISION=${PRECISION:-bf16}
case "$PRECISION" in
bf16) QUANT=() ;;
fp8) QUANT=(--quantization fp8) ;;
*) echo "PRECISION=$PRECISION: expected bf16 or fp8" >&2; exit 2 ;;
esac
case "${KV_DTYPE:-auto}" in
auto) ;;
fp8) QUANT+=(--kv-cache-dtype fp8) ;;
*) echo "KV_DTYPE=$KV_DTYPE: expected auto or fp8" >&2; exit 2 ;;
esac
LIMITS=()
[[ -n "${MAX_BATCH:-}" ]] && LIMITS+=(--max-batch-size "$MAX_BATCH")
[[ -n "${MAX_TOKENS:-}" ]] && LIMITS+=(--max-num-tokens "$MAX_TOKENS")
# The summary below reads these; a skipped step must not show an earlier run's figures.
rm -f /tmp/throughput.txt /tmp/latency.txt /tmp/peer.jsonl
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 
$L bench prepare-dataset --model "$MODEL" --output /tmp/data.jsonl token-norm-dist --num-requests "$REQUESTS" \
  --input-mean "$ISL" --input-stdev 0 --output-mean "$OSL" --output-stdev 0
$L bench prepare-dataset --model "$MODEL" --output /tmp/latency.jsonl token-norm-dist --num-requests 8 \
  --input-mean "$ISL" --input-stdev 0 --output-mean "$OSL" --output-stdev 0
if [[ "${SKIP_THROUGHPUT:-0}" != 1 ]]; then
  $L bench throughput --device cuda --model "$MODEL" --dataset /tmp/data.jsonl --eos-id -1 "${LIMITS[@]}" "${QUANT[@]}" \
    --report-json "$OUT/throughput.json" --iteration-log "$OUT/throughput_iterations.jsonl" \
    ${EXTRA:-} 2>&1 | tee /tmp/throughput.txt
fi
if [[ "${SKIP_LATENCY:-0}" != 1 ]]; then
  $L bench latency --device cuda --model "$MODEL" --dataset /tmp/latency.jsonl --eos-id -1 "${QUANT[@]}" \
    --report-json "$OUT/latency.json" ${EXTRA:-} 2>&1 | tee /tmp/latency.txt
fi
if [[ "${SKIP_PEER:-0}" != 1 ]]; then
  python3 peers/hf_generate.py --model "$MODEL" --batch 1 128 2>&1 | grep '^{' | tee /tmp/peer.jsonl
fi
echo "== summary ($MODEL, $PRECISION, KV cache ${KV_DTYPE:-auto}, ISL/OSL $ISL/$OSL)"
grep -h "Total Output Throughput\|Request Throughput\|Average time-per-output-token" /tmp/throughput.txt /tmp/latency.txt 2>/dev/null || true
cat /tmp/peer.jsonl 2>/dev/null || true
if [[ -f "$OUT/throughput_iterations.jsonl" ]]; then
  python3 - "$OUT/throughput_iterations.jsonl" <<'PY'
import json, sys
its = [json.loads(l) for l in open(sys.argv[1])]
def total(xs, k): return sum(i.get(k) or 0 for i in xs)
for name, xs in [("decode-only", [i for i in its if i["num_ctx_requests"] == 0]), ("with prefill", [i for i in its if i["num_ctx_requests"] > 0])]:
    n = max(1, len(xs))
    print(f"{name:>12}: {len(xs)} iterations, wall {total(xs, 'iter_latency_ms') / 1e3:.2f} s, device {total(xs, 'device_step_ms') / 1e3:.2f} s, "
          f"mean {total(xs, 'num_gen_requests') / n:.0f} gen + {total(xs, 'num_ctx_tokens') / n:.0f} ctx tokens")
PY
fi
