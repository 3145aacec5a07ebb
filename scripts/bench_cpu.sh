#!/usr/bin/env bash
# The CPU benchmark of docs/benchmarks.md: lumen's throughput and latency on SmolLM2-135M with a
# 64-request token-norm-dist dataset (input 128, output 64), then llama.cpp on the same GGUF,
# dataset and thread count when llama-cpp-python is installed. Run scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
LUMEN=target/release/lumen
OUT=target/bench-cpu
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$OUT"

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, ${THREADS} threads, $(date -u +%F)"
$LUMEN bench prepare-dataset --output "$OUT/dataset.jsonl" \
  token-norm-dist --num-requests 64 --input-mean 128 --input-stdev 0 --output-mean 64 --output-stdev 0
$LUMEN bench throughput --threads "$THREADS" --dataset "$OUT/dataset.jsonl" --streaming \
  --report-json "$OUT/throughput.json" --iteration-log "$OUT/iterations.jsonl" > "$OUT/throughput.txt"
$LUMEN bench latency --threads "$THREADS" --dataset "$OUT/dataset.jsonl" --num-requests 8 --warmup 1 \
  --report-json "$OUT/latency.json" > "$OUT/latency.txt"
if python3 -c "import llama_cpp" 2>/dev/null; then
  python3 scripts/llamacpp_peer.py "$MODEL" "$OUT/dataset.jsonl" --threads "$THREADS" > "$OUT/llamacpp.json"
else
  echo "llama-cpp-python is not installed: skipping the peer (pip install llama-cpp-python)" >&2
fi

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
t = json.load(open(f"{out}/throughput.json"))["performance"]
l = json.load(open(f"{out}/latency.json"))
print(f"{'run':<40} {'output tok/s':>12}")
print(f"{'lumen bench throughput (64 req)':<40} {t['system_output_throughput_tok_s']:>12.1f}")
print(f"{'lumen bench latency (batch 1)':<40} {l['performance']['system_output_throughput_tok_s']:>12.1f}"
      f"   TTFT {l['streaming_metrics']['avg_ttft_ms']:.1f} ms, TPOT {l['streaming_metrics']['avg_tpot_ms']:.1f} ms")
peer = f"{out}/llamacpp.json"
if os.path.exists(peer):
    p = json.load(open(peer))
    print(f"{'llama.cpp (one request at a time)':<40} {p['output_tok_s']:>12.1f}   per request {p['per_request_tok_s_mean']} tok/s")
PY
