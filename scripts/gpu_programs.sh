#!/usr/bin/env bash
# Runs every program of scripts/gpu_programs.py (one known pathology each, variants bad and good)
# on the GPU machine, after `scripts/gpu_tests.sh build` here (carry gpu-tests), from the repo root:
#   OUT=/tmp/gpu-programs scripts/gpu_programs.sh
# For each program and variant:
#   - NAME-VARIANT-profile.lumen: `lumen profile -c cudaProfilerApi --gpu-metrics 1000`, so the
#     trace holds the recorded steps (the script brackets them with cudaProfilerStart/Stop) with
#     their NVTX ranges, API calls and PM-sampling counters, and not the set-up and warm-up;
#   - NAME-VARIANT-kineto.json.gz: the same steps under torch.profiler, and
#     NAME-VARIANT-torch.lumen, its `lumen trace import`;
#   - NAME-VARIANT-{profile,torch}-analysis.{txt,json}: `lumen analyze` of each trace;
#   - NAME-VARIANT-{profile,torch}.log: what the runs printed.
# A program that fails is logged and the others go on; the script exits non-zero if any did.
# At the end a table gives each trace's size and the findings of its analysis; the expected
# verdicts are in the docstring of scripts/gpu_programs.py. PROGRAMS="launch sync" runs a subset,
# CAPTURE=none records whole runs (set-up and warm-up included).
set -uo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
L=${LUMEN_BIN:-$PWD/gpu-tests/lumen}
O=${OUT:-/tmp/gpu-programs}
W=/tmp/gpu-programs-work
PROGRAMS=${PROGRAMS:-launch host sync pageable alloc memory compute smallbatch fp32}
CAPTURE=${CAPTURE:-cudaProfilerApi}
LIMIT=150 # seconds for any one run
if [ ! -x "$L" ]; then
  echo "no lumen executable at $L (run scripts/gpu_tests.sh build and carry gpu-tests, or set LUMEN_BIN)" >&2
  exit 2
fi
rm -rf "$W"
mkdir -p "$O" "$W"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed"

failed=()
fail() { # NAME WHAT LOG
  echo "FAILED: $1 $2 (see $3)" | tee -a "$3"
  failed+=("$1 $2")
}

started=$SECONDS
for prog in $PROGRAMS; do
  for variant in bad good; do
    n=$prog-$variant
    echo "== $n ($((SECONDS - started)) s)"
    rm -f "$O/$n"-*
    run=(python3 scripts/gpu_programs.py "$prog" --variant "$variant")

    log=$O/$n-profile.log
    rm -f "$W/$n.lumen"
    timeout $LIMIT "$L" profile -o "$W/$n" -c "$CAPTURE" --gpu-metrics 1000 -- "${run[@]}" >"$log" 2>&1 ||
      fail "$n" "lumen profile (status $?)" "$log"
    grep -hE '^\[gpu_programs\]|^\[lumen\] profile: merged' "$log"
    if [ -f "$W/$n.lumen" ] && cp "$W/$n.lumen" "$O/$n-profile.lumen"; then
      "$L" analyze "$O/$n-profile.lumen" --json "$O/$n-profile-analysis.json" >"$O/$n-profile-analysis.txt" 2>&1 ||
        fail "$n" "analyze (profile)" "$O/$n-profile-analysis.txt"
    fi

    log=$O/$n-torch.log
    rm -f "$W/$n.json"
    timeout $LIMIT "${run[@]}" --torch-trace "$W/$n.json" >"$log" 2>&1 || fail "$n" "torch.profiler run (status $?)" "$log"
    grep -h '^\[gpu_programs\]' "$log"
    if [ -f "$W/$n.json" ]; then
      gzip -c "$W/$n.json" >"$O/$n-kineto.json.gz"
      if timeout $LIMIT "$L" trace import "$W/$n.json" -o "$O/$n-torch.lumen" >>"$log" 2>&1; then
        "$L" analyze "$O/$n-torch.lumen" --json "$O/$n-torch-analysis.json" >"$O/$n-torch-analysis.txt" 2>&1 ||
          fail "$n" "analyze (torch)" "$O/$n-torch-analysis.txt"
      else
        fail "$n" "trace import" "$log"
      fi
    fi
    grep -h '^\[lumen\] imported' "$log"
    rm -f "$W/$n.json"
  done
done
echo "all runs: $((SECONDS - started)) s"

findings() { # ANALYSIS.json: the patterns found, comma-separated
  python3 -c '
import json, sys
try:
    found = json.load(open(sys.argv[1]))["diagnosis"]["findings"]
    print(", ".join(f["pattern"] for f in found) or "none")
except FileNotFoundError:
    print("(no analysis)")
except Exception as e:
    print("(unreadable analysis: %s)" % type(e).__name__)' "$1"
}

echo
echo "traces in $O"
printf '%-10s %-7s %-30s %8s  %s\n' program variant trace size findings
for prog in $PROGRAMS; do
  for variant in bad good; do
    for how in profile torch; do
      t=$prog-$variant-$how.lumen
      size=-
      [ -f "$O/$t" ] && size=$(du -h "$O/$t" | cut -f1)
      printf '%-10s %-7s %-30s %8s  %s\n' "$prog" "$variant" "$t" "$size" "$(findings "$O/$prog-$variant-$how-analysis.json")"
    done
  done
done
if [ ${#failed[@]} -gt 0 ]; then
  echo
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
