#!/usr/bin/env bash
# Batch-1 decode on the GPU machine (docs/gpu.md), after `scripts/gpu_tests.sh build`, carrying
# gpu-tests: for each of MODELS (default "qwen3-30b-a3b gpt-oss-20b moonlight-16b-a3b
# deepseek-v3+layers=5"), `lumen bench latency` (with ARGS, e.g. "--quantization fp8") on 2 requests of 128/64 under `lumen profile -c
# cudaProfilerApi --cuda-graph-trace node` over iterations WINDOW (default 20-29), merged with the
# engine's trace and read by `lumen analyze`; then the same run unprofiled for its TPOT and its
# Decode Step line (device time against start-to-start) in each of VARIANTS (default "off on"):
# `off` and `on` set --overlap-scheduler, `early` is `off` with LUMEN_PDL_EARLY=1, and
# `env:NAME=VALUE` is `off` with that variable set (env:LUMEN_KV_SPLIT_MIN=128); the variants
# alternate REPEAT times (default 1). PROFILE=0 skips the profiled run. Traces, logs and analyses
# go to $OUT (default /tmp/batch1-gpu); a line per model, variant and run is printed last.
set -euo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LUMEN_CACHE_DIR=${LUMEN_CACHE_DIR:-/tmp/lumen-cache}
L=${LUMEN_BIN:-$PWD/gpu-tests/lumen}
OUT=${OUT:-/tmp/batch1-gpu}
MODELS=${MODELS:-qwen3-30b-a3b gpt-oss-20b moonlight-16b-a3b deepseek-v3+layers=5}
mkdir -p "$OUT"
summary=()
for model in $MODELS; do
  name=${model//[^A-Za-z0-9.-]/_}
  rm -f "$OUT/$name"-*.lumen "$OUT/$name.lumen"
  "$L" bench prepare-dataset --model "$model" --output "$OUT/$name.jsonl" token-norm-dist --num-requests 2 \
    --input-mean 128 --input-stdev 0 --output-mean 64 --output-stdev 0 >/dev/null
  if [ "${PROFILE:-1}" != 0 ]; then
    LUMEN_PROFILE_START_STOP=${WINDOW:-20-29} "$L" profile -o "$OUT/$name-gpu.lumen" -c cudaProfilerApi --cuda-graph-trace node -- \
      "$L" bench latency --device cuda --model "$model" ${ARGS:-} --dataset "$OUT/$name.jsonl" --eos-id -1 --trace "$OUT/$name-engine.lumen" \
      >"$OUT/$name-profiled.log" 2>&1
    "$L" trace merge -o "$OUT/$name.lumen" "$OUT/$name-engine.lumen" "$OUT/$name-gpu.lumen" >>"$OUT/$name-profiled.log" 2>&1
    "$L" analyze "$OUT/$name.lumen" >"$OUT/$name-analysis.txt"
  fi
  for run in $(seq "${REPEAT:-1}"); do
    for variant in ${VARIANTS:-off on}; do
      setting=LUMEN_PDL_EARLY=0
      case $variant in
      off | on) overlap=$variant ;;
      early) overlap=off setting=LUMEN_PDL_EARLY=1 ;;
      env:?*=*) overlap=off setting=${variant#env:} ;;
      *) echo "batch1_gpu: VARIANTS takes off, on, early and env:NAME=VALUE, not $variant" >&2; exit 2 ;;
      esac
      log="$OUT/$name-latency-${variant//[^A-Za-z0-9.-]/_}-$run.txt"
      env "$setting" "$L" bench latency --device cuda --model "$model" ${ARGS:-} --dataset "$OUT/$name.jsonl" --eos-id -1 \
        --overlap-scheduler $overlap >"$log" 2>&1
      summary+=("$(printf '%-24s %-5s run %s %s' "$model" $variant "$run" "$(grep -h 'time-per-output\|Decode Step' "$log" | tr -s ' ' | tr '\n' ' ')")")
    done
  done
done
echo "== batch 1 on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
printf '%s\n' "${summary[@]}"
