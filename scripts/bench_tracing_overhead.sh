#!/usr/bin/env bash
# What profiling costs: lumen's CPU throughput with every sink off, against a build whose spans
# are compiled out (feature lumen-trace/no-spans), then with the recorder on for every iteration
# and with the debug ranges too; and the trace size per 1,000 iterations. Runs alternate between
# builds so drift hits both alike; the table gives the median of each. Run scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
OUT=target/bench-tracing
mkdir -p "$OUT"
rm -f "$OUT"/*.txt
cargo build --release --quiet
cargo run --release --quiet -p lumen-trace --example span_cost > "$OUT/span_cost.cost"
CARGO_TARGET_DIR=target/no-spans cargo build --release --quiet --features lumen-trace/no-spans
ON=target/release/lumen
OFF=target/no-spans/release/lumen
$ON bench prepare-dataset --output "$OUT/dataset.jsonl" \
  token-norm-dist --num-requests 32 --input-mean 128 --input-stdev 0 --output-mean 32 --output-stdev 0 2>/dev/null

run() { # label binary extra-env...
  local label=$1 bin=$2; shift 2
  env "$@" "$bin" bench throughput --dataset "$OUT/dataset.jsonl" --warmup 1 --report-json "$OUT/$label.json" >/dev/null 2>&1
  python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['performance']['system_output_throughput_tok_s'])" "$OUT/$label.json" >> "$OUT/$label.txt"
}
for i in $(seq "$RUNS"); do
  run compiled-out "$OFF"
  run off "$ON"
  run recorder "$ON" LUMEN_TRACE="$OUT/recorder.lumen"
  run debug "$ON" LUMEN_TRACE="$OUT/debug.lumen" LUMEN_NVTX_DEBUG=1
done

python3 - "$OUT" <<'PY'
import json, os, sqlite3, statistics, sys
out = sys.argv[1]
med = {k: statistics.median(float(x) for x in open(f"{out}/{k}.txt")) for k in ["compiled-out", "off", "recorder", "debug"]}
base = med["compiled-out"]
print(f"machine: {open('/proc/cpuinfo').read().split('model name')[1].split(':')[1].splitlines()[0].strip()}, {os.cpu_count()} cores")
print(f"{'build / switches':<34} {'output tok/s':>12} {'vs compiled out':>16}")
for k, label in [("compiled-out", "spans compiled out"), ("off", "all sinks off"), ("recorder", "recorder, every iteration"), ("debug", "recorder + LUMEN_NVTX_DEBUG")]:
    print(f"{label:<34} {med[k]:>12.2f} {100 * (med[k] / base - 1):>+15.2f}%")
for k in ["recorder", "debug"]:
    path = f"{out}/{k}.lumen"
    iters = sqlite3.connect(path).execute("SELECT COUNT(*) FROM iterations").fetchone()[0]
    print(f"trace size, {k}: {os.path.getsize(path) / iters * 1000 / 1e6:.2f} MB per 1,000 iterations ({iters} iterations)")
cost = {l[:40].strip(): float(l[40:]) for l in open(f"{out}/span_cost.cost").read().splitlines()[1:]}
db = sqlite3.connect(f"{out}/debug.lumen")
iters, mean_ns = db.execute("SELECT COUNT(*), AVG(end - start) FROM iterations").fetchone()
calls = sum(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ["spans", "marks", "counters"]) / iters
off_ns = calls * cost["span, all sinks off"]
print(f"instrumentation sites per iteration (every switch on): {calls:.0f}; a disabled call costs {cost['span, all sinks off']:.2f} ns")
print(f"bound on the cost with sinks off: {off_ns:.0f} ns per {mean_ns / 1e6:.1f} ms iteration = {100 * off_ns / mean_ns:.5f}%")
PY
