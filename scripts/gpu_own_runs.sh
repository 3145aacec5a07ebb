#!/usr/bin/env bash
# lumen's own runs on the GPU machine, diagnosed, and the top advice applied and measured, after
# `scripts/gpu_tests.sh build` here (carry gpu-tests), from the repo root:
#   OUT=/tmp/own-runs scripts/gpu_own_runs.sh
# 1. default: `lumen bench throughput --device cuda --model llama-3.1-8b` on 3,000 requests of
#    128/128 tokens with the default limits, iterations 100-129 recorded by the engine and by
#    `lumen profile -c cudaProfilerApi --cuda-graph-trace node --gpu-metrics 500`, merged
#    (llama8b-default.lumen) and analysed;
# 2. tuned: the same run with the --max-batch-size and --max-num-tokens that the default run's
#    top finding suggests (llama8b-tuned.lumen), and `lumen analyze --compare` against default;
# 3. latency: `lumen bench latency` (batch 1), iterations 20-59, the same way
#    (llama8b-latency.lumen).
# Each run's report JSON, log and analysis go to $OUT; a table of predicted and measured gain
# and the verdicts is printed last. RUNS="latency" (or "throughput") runs a part.
set -uo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LUMEN_CACHE_DIR=${LUMEN_CACHE_DIR:-/tmp/lumen-cache}
L=${LUMEN_BIN:-$PWD/gpu-tests/lumen}
O=${OUT:-/tmp/own-runs}
W=/tmp/own-runs-work
MODEL=${MODEL:-llama-3.1-8b}
REQUESTS=${REQUESTS:-3000}
rm -rf "$W"
mkdir -p "$O" "$W"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed"

# profiled NAME WINDOW LUMEN-ARGS...: one run under the engine's recorder and the collector.
profiled() {
  local name=$1 window=$2
  shift 2
  echo "== $name: lumen $*"
  LUMEN_PROFILE_START_STOP=$window "$L" profile -o "$W/$name-gpu" -c cudaProfilerApi --cuda-graph-trace node --gpu-metrics 500 -- \
    "$L" "$@" --trace "$W/$name-engine.lumen" --report-json "$O/$name-report.json" >"$O/$name-run.log" 2>&1 ||
    echo "run $name failed (see $O/$name-run.log)"
  "$L" trace merge -o "$O/$name.lumen" "$W/$name-engine.lumen" "$W/$name-gpu.lumen" >>"$O/$name-run.log" 2>&1 ||
    echo "merge $name failed"
  "$L" analyze "$O/$name.lumen" --json "$O/$name-analysis.json" >"$O/$name-analysis.txt" 2>&1 || echo "analyze $name failed"
  sed -n '/== Diagnosis ==/,/== Overview ==/p' "$O/$name-analysis.txt" | head -40
}

"$L" bench prepare-dataset --model "$MODEL" --output "$W/d128.jsonl" token-norm-dist --num-requests "$REQUESTS" \
  --input-mean 128 --input-stdev 0 --output-mean 128 --output-stdev 0 >"$O/prepare.log" 2>&1

RUNS=${RUNS:-throughput latency}
batch=- tokens=- gain=-
if [[ " $RUNS " == *" throughput "* ]]; then
profiled llama8b-default 100-129 bench throughput --device cuda --model "$MODEL" --dataset "$W/d128.jsonl"

read -r batch tokens gain < <(python3 - "$O/llama8b-default-analysis.json" <<'EOF'
import json, re, sys
findings = json.load(open(sys.argv[1]))["diagnosis"]["findings"]
top = findings[0] if findings else {"action": "", "expected_gain": None}
b = re.search(r"--max-batch-size (\d+)", top["action"])
t = re.search(r"--max-num-tokens (\d+)", top["action"])
print(b.group(1) if b else "-", t.group(1) if t else "-", top.get("expected_gain") or "-")
EOF
)
echo "top finding of the default run: --max-batch-size $batch --max-num-tokens $tokens, expected gain $gain"
if [ "$batch" != "-" ]; then
  profiled llama8b-tuned 100-129 bench throughput --device cuda --model "$MODEL" --dataset "$W/d128.jsonl" \
    --max-batch-size "$batch" --max-num-tokens "$tokens"
  "$L" analyze "$O/llama8b-tuned.lumen" --compare "$O/llama8b-default.lumen" --json "$O/compare.json" >"$O/compare.txt" 2>&1
  sed -n '/== Comparison: verdict ==/,/== Comparison: headline/p' "$O/compare.txt"
fi
fi

[[ " $RUNS " == *" latency "* ]] && profiled llama8b-latency 20-59 bench latency --device cuda --model "$MODEL" --dataset "$W/d128.jsonl" --num-requests 4

ls -l "$O"
python3 - "$O" "$gain" <<'EOF'
import json, os, sys
out, gain = sys.argv[1], sys.argv[2]
def load(name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) else None
def tput(name):
    r = load(name + "-report.json")
    if not r:
        return None
    for key in ("system_output_throughput_tok_s", "total_output_throughput_tok_s", "output_throughput_tok_s"):
        for section in [r] + [v for v in r.values() if isinstance(v, dict)]:
            if key in section:
                return section[key]
    return None
print("%-18s %-14s %s" % ("run", "output tok/s", "findings"))
for name in ("llama8b-default", "llama8b-tuned", "llama8b-latency"):
    a = load(name + "-analysis.json")
    findings = [f["pattern"] for f in a["diagnosis"]["findings"]] if a else ["(no analysis)"]
    print("%-18s %-14s %s" % (name, tput(name), "; ".join(findings)))
d, t = tput("llama8b-default"), tput("llama8b-tuned")
if d and t:
    print("predicted gain %s, measured %.2fx" % (gain, t / d))
c = load("compare.json")
if c:
    print("compare verdict:", c["comparison"]["verdict"].get("available", {}).get("summary"))
EOF
