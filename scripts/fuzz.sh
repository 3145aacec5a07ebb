#!/usr/bin/env bash
# Fuzzes every parser (crates/fuzz: GGUF, safetensors, dataset lines, engine config in YAML and
# JSON, Kineto JSON, the .lumen reader) for MINUTES each, starting from the seed inputs in
# crates/fuzz/corpus/. Exits non-zero on any crash; crashing inputs are saved under
# target/fuzz-crashes/. `scripts/test.sh` runs the same harness for a few seconds per parser.
#   scripts/fuzz.sh MINUTES [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:?usage: scripts/fuzz.sh MINUTES [SEED]}
cargo build --release -p lumen-fuzz
target/release/lumen-fuzz all "$((minutes * 60))" "${2:-1}"
