#!/usr/bin/env bash
# On the GPU machine (it needs nvcc, not lumen): builds scripts/dataflow_probe.cu for each
# "consumer-warps ring-pages [noahead|xregs|page8k]" entry of SHAPES (comma-separated, default
# "6 12,12 12,8 8,6 12 xregs,6 24 page8k,6 12 noahead"; `noahead` loads no stage's rows before its
# input is ready, the control; `xregs` holds the 2,048-value inputs in registers; `page8k` pages of
# 8 KB instead of 16) and runs it at a context
# of CTX positions (default 150): qwen3-30b-a3b's 48 batch-1 decode layers as one persistent
# kernel whose blocks stream their weight rows into shared memory ahead of the data, against the
# same arithmetic one launch a stage. Each run prints both step times, the largest difference
# between their results, and each stage's time (from the grid finishing one to finishing the next); logs go to $OUT (default /tmp/dataflow-probe).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/dataflow-probe}
mkdir -p "$OUT"
status=0
shapes=("6 12" "12 12" "8 8" "6 12 xregs" "6 24 page8k" "6 12 noahead")
[ -n "${SHAPES:-}" ] && IFS=',' read -r -a shapes <<<"$SHAPES"
for shape in "${shapes[@]}"; do
  set -- $shape
  case ${3:-} in
  "") variant=() ;;
  noahead) variant=(-DNO_AHEAD) ;;
  xregs) variant=(-DX_REGS) ;;
  page8k) variant=(-DPAGE_BYTES=8192) ;;
  *) echo "dataflow probe: $shape: the third word is noahead, xregs or page8k" >&2; exit 2 ;;
  esac
  name=$1_$2${3:+_$3}
  bin=/tmp/dataflow_probe_$name
  if ! nvcc -O3 -arch=sm_90a -DNCONS="$1" -DRING="$2" "${variant[@]}" -o "$bin" scripts/dataflow_probe.cu >"$OUT/build_$name.txt" 2>&1; then
    echo "dataflow probe: the build of $shape failed:"; head -40 "$OUT/build_$name.txt"; status=1; continue
  fi
  timeout 30 "$bin" "${CTX:-150}" >"$OUT/run_$name.txt" 2>&1
  rc=$?
  echo "== $1 consumer warps, $2 pages${3:+, $3}: exit $rc"
  cat "$OUT/run_$name.txt"
  [ $rc = 0 ] || status=1
  # A run takes seconds; one cut at 30 s hung, and the other shapes would hang the same way.
  [ $rc = 124 ] && { echo "dataflow probe: $shape hung; the other shapes are not run"; break; }
done
exit $status
