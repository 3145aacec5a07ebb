#!/usr/bin/env bash
# On the GPU machine (it needs nvcc, not lumen): builds scripts/dataflow_probe.cu for each
# "consumer-warps ring-pages" pair of SHAPES (comma-separated, default "6 12,12 12,8 8") and runs it at a context
# of CTX positions (default 150): qwen3-30b-a3b's 48 batch-1 decode layers as one persistent
# kernel whose blocks stream their weight rows into shared memory ahead of the data, against the
# same arithmetic one launch a stage. Each run prints both step times, the largest difference
# between their results, and block 0's time per stage; logs go to $OUT (default /tmp/dataflow-probe).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/dataflow-probe}
mkdir -p "$OUT"
status=0
shapes=("6 12" "12 12" "8 8")
[ -n "${SHAPES:-}" ] && IFS=',' read -r -a shapes <<<"$SHAPES"
for shape in "${shapes[@]}"; do
  set -- $shape
  bin=/tmp/dataflow_probe_$1_$2
  if ! nvcc -O3 -arch=sm_90a -DNCONS="$1" -DRING="$2" -o "$bin" scripts/dataflow_probe.cu >"$OUT/build_$1_$2.txt" 2>&1; then
    echo "dataflow probe: the build for $1 consumer warps and $2 pages failed:"; head -40 "$OUT/build_$1_$2.txt"; status=1; continue
  fi
  timeout 90 "$bin" "${CTX:-150}" >"$OUT/run_$1_$2.txt" 2>&1
  rc=$?
  echo "== $1 consumer warps, $2 pages: exit $rc"
  cat "$OUT/run_$1_$2.txt"
  [ $rc = 0 ] || status=1
done
exit $status
