#!/usr/bin/env bash
# Records the real H100 traces the analyzer's tests use (crates/analyze/tests/data/), on the GPU
# machine after `scripts/gpu_tests.sh build` here (docs/gpu.md):
#   - eager.lumen, graphs.lumen: iterations 20-23 of `lumen bench throughput` on the SmolLM2-135M
#     shape, CUDA graphs off and on, under `lumen profile -c cudaProfilerApi --cuda-graph-trace
#     node --gpu-metrics`, merged with the engine's own recorder trace of the same window, so one
#     file holds kernels, API calls, NVTX ranges, PM-sampling counters, iterations and phases;
#   - torch_decode.json: a small PyTorch decode loop under torch.profiler
#     (scripts/torch_decode_trace.py), for `lumen trace import`.
# Each trace is analysed once there; logs and traces go to $OUT (or /tmp/gpu-fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LUMEN_CACHE_DIR=${LUMEN_CACHE_DIR:-/tmp/lumen-cache}
L=${LUMEN_BIN:-$PWD/gpu-tests/lumen}
O=${OUT:-/tmp/gpu-fixtures}
W=/tmp/gpu-fixtures-work
mkdir -p "$O" "$W"
$L bench prepare-dataset --model smollm2-135m --output "$W/data.jsonl" token-norm-dist --num-requests 64 \
  --input-mean 128 --input-stdev 0 --output-mean 64 --output-stdev 0 >"$O/prepare.log" 2>&1
for mode in eager graphs; do
  graphs=off; [ "$mode" = graphs ] && graphs=on
  rm -f "$W/$mode-gpu.lumen" "$W/$mode-engine.lumen" "$O/$mode.lumen"
  LUMEN_PROFILE_START_STOP=20-23 $L profile -o "$W/$mode-gpu" -c cudaProfilerApi --cuda-graph-trace node \
    --gpu-metrics 250 -- $L bench throughput --device cuda --model smollm2-135m --dataset "$W/data.jsonl" \
    --max-batch-size 64 --cuda-graphs $graphs --trace "$W/$mode-engine.lumen" >"$O/$mode-run.log" 2>&1
  $L trace merge -o "$O/$mode.lumen" "$W/$mode-gpu.lumen" "$W/$mode-engine.lumen" >>"$O/$mode-run.log" 2>&1
  $L analyze "$O/$mode.lumen" >"$O/$mode-analysis.txt" 2>&1 || echo "analyze $mode failed" >>"$O/$mode-analysis.txt"
done
python3 scripts/torch_decode_trace.py "$O/torch_decode.json" >"$O/torch.log" 2>&1
ls -l "$O"
for mode in eager graphs; do
  echo "== $mode"; $L trace info "$O/$mode.lumen" | head -20; sed -n 1,25p "$O/$mode-analysis.txt"
done
