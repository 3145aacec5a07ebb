#!/usr/bin/env bash
# The findings of `lumen analyze` on the committed GPU-program traces
# (crates/analyze/tests/data/programs/, recorded on an H200 by scripts/gpu_programs.sh), one line
# per trace with each finding's first evidence line: the source of the diagnosis table in
# docs/benchmarks.md. Runs anywhere, no GPU needed:
#   scripts/programs_findings.sh [path/to/lumen] > docs/logs/programs_findings_DATE.txt
set -euo pipefail
cd "$(dirname "$0")/.."
L=${1:-target/release/lumen}
dir=crates/analyze/tests/data/programs
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "# $($L --version 2>/dev/null || echo lumen), $(date -u +%F), traces in $dir"
for trace in "$dir"/*.lumen crates/analyze/tests/data/llama8b-*.lumen; do
  name=$(basename "$trace" .lumen)
  "$L" analyze "$trace" --json "$tmp/$name.json" >/dev/null
  python3 - "$tmp/$name.json" "$name" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))["diagnosis"]
found = d["findings"]
line = "; ".join(f"{f['pattern']}: {f['evidence'][0] if f['evidence'] else ''}" for f in found) or "none"
print(f"{sys.argv[2]}: {line}")
PY
done
