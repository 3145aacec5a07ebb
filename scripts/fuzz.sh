#!/usr/bin/env bash
# Fuzzes every parser (crates/fuzz: GGUF, safetensors, dataset lines, engine config in YAML and
# JSON, Kineto JSON, the .lumen reader) for MINUTES each (or SECONDS, written with an s: 5s),
# starting from the seed inputs in crates/fuzz/corpus/ and guided by edge coverage: the binary is
# built with LLVM SanitizerCoverage (inline 8-bit counters, stable rustc) into target/fuzz-cov, and
# an input that reaches an edge or hit-count bucket never seen before joins the corpus (and is
# written to target/fuzz-corpus/). --unguided mutates the seeds only, for comparison. Exits
# non-zero on any crash; crashing inputs are saved under target/fuzz-crashes/.
# `scripts/test.sh` runs it for a few seconds per parser.
#   scripts/fuzz.sh MINUTES|SECONDSs [SEED] [--unguided]
set -euo pipefail
cd "$(dirname "$0")/.."
time=${1:?usage: scripts/fuzz.sh MINUTES|SECONDSs [SEED] [--unguided]}
if [[ $time == *s ]]; then seconds=${time%s}; else seconds=$((time * 60)); fi
host=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps the flags off build scripts and proc macros, which run inside the compiler.
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=3 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters" \
    cargo build --release -p lumen-fuzz --target "$host" --target-dir target/fuzz-cov
"target/fuzz-cov/$host/release/lumen-fuzz" ${3:+"$3"} all "$seconds" "${2:-1}"
