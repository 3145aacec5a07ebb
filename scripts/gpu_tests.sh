#!/usr/bin/env bash
# The GPU test suite, in two halves (docs/gpu.md):
#   scripts/gpu_tests.sh build   here: builds `lumen` and the CUDA test binaries (release, no
#                                debug info, stripped) into gpu-tests/, and packs that folder into
#                                device/gpu-tests.tar.xz (a quarter of its size), which the device
#                                call carries;
#   scripts/gpu_tests.sh run     on the GPU machine: unpacks device/gpu-tests.tar.xz when
#                                gpu-tests/ is missing, then runs every binary in gpu-tests/ with
#                                LUMEN_REQUIRE_GPU=1, so a test that cannot open the GPU fails
#                                instead of skipping, and fails itself on any "skipped" line; prints a
#                                summary; the full log goes to $OUT/gpu_tests.log when $OUT is set;
#                                ONLY="cuda_moe cuda_fp8" runs just those binaries (a device call
#                                of 600 s does not hold the whole suite and a model run).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=gpu-tests
# Test binaries, the crate each comes from, and optionally a name filter (the tests of
# reference_logits that need no checkout files or model download, the GPU test of overlap_scheduler).
TESTS=(lumen-engine:cuda_vs_cpu lumen-engine:cuda_tensor_parallel lumen-engine:cuda_moe lumen-engine:overlap_scheduler:on_cuda lumen-engine:reference_logits:cuda lumen-model:plan:cuda lumen-backend:cuda_sampling lumen-backend:cuda_fp8 lumen-backend:cuda_attention lumen-backend:cuda_kernel_fault lumen-backend:cuda_nccl lumen-cli:cuda lumen-cli:profile)

case "${1:-}" in
build)
  export CARGO_PROFILE_RELEASE_DEBUG=0
  rm -rf "$DIR" && mkdir -p "$DIR"
  cargo build --release -p lumen-cli
  cp target/release/lumen "$DIR/"
  for t in "${TESTS[@]}"; do
    IFS=: read -r crate name _ <<<"$t"
    exe=$(cargo test --release --no-run -p "$crate" --test "$name" --message-format=json 2>/dev/null |
      python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -1)
    cp "$exe" "$DIR/$name"
  done
  strip "$DIR"/*
  mkdir -p device
  tar -cf - "$DIR" | xz -T0 -6 >device/gpu-tests.tar.xz
  du -sh "$DIR" device/gpu-tests.tar.xz
  ;;
run)
  [ -d "$DIR" ] || tar -xJf device/gpu-tests.tar.xz
  export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export LUMEN_BIN=$PWD/$DIR/lumen
  export LUMEN_CACHE_DIR=${LUMEN_CACHE_DIR:-/tmp/lumen-cache}
  export LUMEN_REQUIRE_GPU=1
  source scripts/nccl_env.sh
  log=${OUT:-/tmp}/gpu_tests.log
  : >"$log"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  status=0
  summary=()
  for t in "${TESTS[@]}"; do
    IFS=: read -r _ name filter <<<"$t"
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
    echo "==== $name" >>"$log"
    if "$DIR/$name" --test-threads=1 --nocapture ${filter:+"$filter"} >/tmp/gpu_test_$name.log 2>&1; then r=ok; else r=FAILED; status=1; fi
    if grep -q "skipped" /tmp/gpu_test_$name.log; then r="FAILED (a test skipped)"; status=1; fi
    cat /tmp/gpu_test_$name.log >>"$log"
    summary+=("$(printf '%-20s %-6s %s' "$name" "$r" "$(grep -E '^test result' /tmp/gpu_test_$name.log | tail -1)")")
  done
  grep -hE "worst relative|worst error|skipped|panicked" "$log" || true
  printf '%s\n' "${summary[@]}"
  exit $status
  ;;
*)
  echo "usage: scripts/gpu_tests.sh build|run" >&2
  exit 2
  ;;
esac
