#!/usr/bin/env bash
# The main job: the default model answers a prompt, a synthetic dataset is prepared, and the
# engine serves it with a trtllm-bench style throughput report. Run scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
LUMEN=target/release/lumen
[ -x "$LUMEN" ] || { echo "missing $LUMEN: run scripts/setup.sh first" >&2; exit 1; }
mkdir -p target/demo

echo "== lumen generate --chat --prompt \"What is the capital of France?\""
$LUMEN generate --chat --prompt "What is the capital of France?"

echo
echo "== lumen bench prepare-dataset: 32 requests, input ~128 tokens, output ~32 tokens"
$LUMEN bench prepare-dataset --output target/demo/dataset.jsonl \
  token-norm-dist --num-requests 32 --input-mean 128 --input-stdev 16 --output-mean 32 --output-stdev 4

echo
echo "== lumen bench throughput --streaming"
$LUMEN bench throughput --dataset target/demo/dataset.jsonl --streaming \
  --report-json target/demo/report.json --iteration-log target/demo/iterations.jsonl
echo
echo "report: target/demo/report.json, per-iteration stats: target/demo/iterations.jsonl"
