#!/usr/bin/env bash
# Runs every test: fetches the default model and NVRTC if they are missing (the tests use them), then the
# workspace's unit, integration and end-to-end tests, then every parser's fuzzer for a few seconds
# (scripts/fuzz.sh runs them longer). Needs no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
LUMEN_SETUP_NO_BUILD=1 scripts/setup.sh
# NVRTC (fetched by setup.sh) lets the kernel compile test run without a GPU.
export LD_LIBRARY_PATH=$PWD/.cache/nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
cargo test --workspace --no-fail-fast
scripts/fuzz.sh "${LUMEN_FUZZ_SECONDS:-5}s"
