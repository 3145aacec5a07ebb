#!/usr/bin/env bash
# lumen against Holistic Trace Analysis (HTA) on one torch.profiler (Kineto) trace of N kernels:
# `lumen trace import` + `lumen analyze` timed against HTA's parse + temporal, idle-time and kernel
# breakdowns, wall time and peak RSS of each step from /usr/bin/time -v, and the figures both give
# (GPU idle time, kernel time per name) compared.
#
# Usage: scripts/analyze_vs_hta.sh [N] [TRACE_DIR]
#   N          kernels in the trace, when it has to be generated (default 1000000, about 680 MB)
#   TRACE_DIR  the directory holding rank0.json (default target/analyze-vs-hta/trace); the trace
#              is generated there when missing
# Environment:
#   GENERATOR   the generator, called as `python3 GENERATOR N OUT.json` (default scripts/gen_kineto_trace.py)
#   HTA_PYTHON  a python with HTA installed (pip install HolisticTraceAnalysis); without it only lumen runs
#   HTA_EXACT=1 runs HTA without its rounding of times to whole microseconds and with the last
#               ProfilerStep, so that its figures must equal lumen's; by default HTA runs as shipped
#               and lumen's rows are also summed under HTA's rules to compare with it
#   OUT         where the results go (default target/analyze-vs-hta)
# Exit status: 1 when any compared figure (the GPU idle time, each kernel name's total) differs
# from HTA's by half a nanosecond or more, after a line per mismatch and a last line
# "N figures compared, M mismatches"; without HTA_PYTHON nothing is compared and it exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
OUT=${OUT:-target/analyze-vs-hta}
TRACE_DIR=${2:-$OUT/trace}
GENERATOR=${GENERATOR:-scripts/gen_kineto_trace.py}
LUMEN=target/release/lumen
TRACE=$TRACE_DIR/rank0.json
mkdir -p "$OUT" "$TRACE_DIR"

if [ ! -s "$TRACE" ]; then
  echo "generating $TRACE ($N kernels) with $GENERATOR"
  python3 "$GENERATOR" "$N" "$TRACE"
fi
cargo build --release -p lumen-cli
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB; $(date -u +%F)"
echo "trace:   $TRACE ($(( $(stat -c %s "$TRACE") / 1048576 )) MiB)"

/usr/bin/time -v -o "$OUT/import.time" "$LUMEN" trace import "$TRACE" -o "$OUT/trace.lumen"
/usr/bin/time -v -o "$OUT/analyze.time" "$LUMEN" analyze "$OUT/trace.lumen" --top 1000 --json "$OUT/analysis.json" > "$OUT/analysis.txt"
echo "lumen analyze report: $OUT/analysis.txt"

HTA_JSON=
if [ -n "${HTA_PYTHON:-}" ]; then
  cat > "$OUT/hta_run.py" <<'EOF'
import json, os, sys, time
t0 = time.time()
from hta.trace_analysis import TraceAnalysis
exact = os.environ.get("HTA_DISABLE_NS_ROUNDING") == "1"
analysis = TraceAnalysis(trace_dir=sys.argv[1], include_last_profiler_step=exact)
t1 = time.time()
temporal = analysis.get_temporal_breakdown(visualize=False)
t2 = time.time()
idle = analysis.get_idle_time_breakdown(visualize=False)[0]
t3 = time.time()
_, kernels = analysis.get_gpu_kernel_breakdown(visualize=False, duration_ratio=1.0, num_kernels=100000)
t4 = time.time()
print(temporal.to_string(), idle.to_string(), kernels.to_string(), sep="\n")
row = temporal.iloc[0]
json.dump({
    "parse_s": t1 - t0, "temporal_s": t2 - t1, "idle_s": t3 - t2, "kernel_s": t4 - t3,
    "idle_us": float(row["idle_time(us)"]), "window_us": float(row["kernel_time(us)"]),
    "kernels_us": {r["name"]: float(r["sum (us)"]) for _, r in kernels.iterrows()},
}, open(sys.argv[2], "w"))
EOF
  echo "running HTA ($HTA_PYTHON$([ "${HTA_EXACT:-0}" = 1 ] && echo ', exact times and every step'))"
  HTA_DISABLE_NS_ROUNDING=${HTA_EXACT:-0} /usr/bin/time -v -o "$OUT/hta.time" \
    "$HTA_PYTHON" "$OUT/hta_run.py" "$TRACE_DIR" "$OUT/hta.json" > "$OUT/hta.log" 2>&1
  HTA_JSON=$OUT/hta.json
fi

python3 - "$OUT" "$HTA_JSON" "${HTA_EXACT:-0}" <<'EOF'
import json, math, sqlite3, sys
out, hta_path, exact = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
a = json.load(open(f"{out}/analysis.json"))
gpu = a["gpu"]["available"][0]
lumen_idle_us = gpu["idle_ns"] / 1e3
lumen_kernels = {k["name"]: k["total_ns"] / 1e3 for k in a["kernels"]["available"]["top"]}

# lumen's rows under HTA's rules: times rounded inwards to whole microseconds, and only GPU work
# launched before the last ProfilerStep starts.
db = sqlite3.connect(f"{out}/trace.lumen")
last_step = db.execute("SELECT MAX(start) FROM iterations").fetchone()[0]
rows = db.execute(
    "SELECT n.value, g.start, g.end FROM gpu_ops g JOIN strings n ON n.id = g.name "
    "JOIN api_calls c ON c.pid = g.pid AND c.correlation = g.correlation "
    "WHERE g.kind != 'sync' AND (?1 IS NULL OR c.start < ?1) ORDER BY g.start",
    (last_step,),
)
rule_kernels, busy = {}, []
for name, start, end in rows:
    s, e = math.ceil(start / 1e3), math.floor(end / 1e3)
    rule_kernels[name] = rule_kernels.get(name, 0) + (e - s)
    busy.append((s, e))
covered, window = 0, (busy[-1][1] - busy[0][0]) if busy else 0
reach = None
for s, e in busy:
    if reach is None or s > reach:
        covered += e - s
        reach = e
    elif e > reach:
        covered += e - reach
        reach = e
rule_idle_us = window - covered

hta = json.load(open(hta_path)) if hta_path else None
print(f"\nGPU idle time: lumen {lumen_idle_us:,.3f} us; lumen's rows under HTA's rules {rule_idle_us:,.0f} us"
      + (f"; HTA {hta['idle_us']:,.3f} us" if hta else ""))
print(f"{'kernel':<48} {'lumen us':>14} {'HTA rules us':>14}" + (f" {'HTA us':>14}" if hta else ""))
for name in sorted(lumen_kernels, key=lambda n: -lumen_kernels[n]):
    line = f"{name[:48]:<48} {lumen_kernels[name]:>14,.3f} {rule_kernels.get(name, 0):>14,.0f}"
    if hta:
        line += f" {hta['kernels_us'].get(name, float('nan')):>14,.3f}"
    print(line)
# Figures equal to the nanosecond: both sides are whole ns (or, under HTA's rules, whole us).
TOLERANCE_US = 0.0005
compared, mismatches = 0, []
if hta:
    want_idle, want = (lumen_idle_us, lumen_kernels) if exact else (rule_idle_us, rule_kernels)
    names = sorted(set(want) | set(hta["kernels_us"]))
    worst = max((abs(hta["kernels_us"].get(n, 0) - want.get(n, 0)) for n in names), default=0.0)
    print(f"HTA against lumen{'' if exact else ' under HTA rules'}: idle differs by {abs(hta['idle_us'] - want_idle):.3f} us, "
          f"kernel totals by at most {worst:.3f} us")
    figures = [("GPU idle time", hta["idle_us"], want_idle)]
    figures += [(f"kernel {n}", hta["kernels_us"].get(n), want.get(n)) for n in names]
    for figure, theirs, ours in figures:
        compared += 1
        # A name one side lacks counts as 0 us there.
        if not abs((theirs or 0.0) - (ours or 0.0)) < TOLERANCE_US:
            mismatches.append(figure)
            show = lambda us: "missing" if us is None else f"{us:,.3f} us"
            print(f"MISMATCH {figure}: HTA {show(theirs)}, lumen{'' if exact else ' under HTA rules'} {show(ours)}")


def report(path):
    text = open(path).read().splitlines()
    wall = next(l for l in text if "Elapsed (wall clock)" in l).split(": ")[-1].split(":")
    rss = next(l for l in text if "Maximum resident set size" in l).split(": ")[-1]
    return sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall))), int(rss) / 1024


(imp_s, imp_rss), (ana_s, ana_rss) = report(f"{out}/import.time"), report(f"{out}/analyze.time")
print(f"\nlumen peak RSS: import {imp_rss:,.0f} MiB, analyze {ana_rss:,.0f} MiB")
print(f"\n{'tool':<6} {'parse/import s':>15} {'analysis s':>11} {'total s':>9} {'peak RSS MiB':>13}")
print(f"{'lumen':<6} {imp_s:>15.1f} {ana_s:>11.1f} {imp_s + ana_s:>9.1f} {max(imp_rss, ana_rss):>13,.0f}")
if hta:
    hta_total, hta_rss = report(f"{out}/hta.time")
    analysis_s = hta["temporal_s"] + hta["idle_s"] + hta["kernel_s"]
    print(f"{'HTA':<6} {hta['parse_s']:>15.1f} {analysis_s:>11.1f} {hta_total:>9.1f} {hta_rss:>13,.0f}")
    print(f"lumen is {hta_total / (imp_s + ana_s):.0f}x faster than HTA end to end")

print(f"\n{compared} figures compared, {len(mismatches)} mismatches" + ("" if hta else " (no HTA_PYTHON: nothing compared)"))
sys.exit(1 if mismatches else 0)
EOF
