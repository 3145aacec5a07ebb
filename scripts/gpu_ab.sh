#!/usr/bin/env bash
# Two builds of lumen timed against each other on the GPU machine, in one call (docs/gpu.md):
#   scripts/gpu_ab.sh build REV   here: builds `lumen` and the `attention_speed` example (release,
#                                 no debug info, stripped) of commit REV into gpu-ab/a/ (in a git
#                                 worktree under target/ab-worktree, with its own target folder
#                                 target/ab, so the working tree's build stays warm) and of the
#                                 working tree into gpu-ab/b/, and packs gpu-ab into
#                                 device/gpu-ab.tar.xz, which the device call carries (beside
#                                 device/gpu-tests.tar.xz: both fit the call's 64 MiB);
#   scripts/gpu_ab.sh run         on the GPU machine (unpacking device/gpu-ab.tar.xz when gpu-ab/
#                                 is missing): `attention_speed` of both builds on the shapes
#                                 whose name holds SHAPE (default "prefill"; SHAPE= skips it), then
#                                 `lumen bench throughput --device cuda` on REQUESTS (default 500)
#                                 requests of ISL/OSL (default 2048/128) of MODEL (default
#                                 llama-3.1-8b) with FLAGS (default "--quantization fp8
#                                 --kv-cache-dtype fp8"), limits tuned, EOS ignored, the builds
#                                 alternating b, a, b, a… REPEAT times each (default 2), and with
#                                 LATENCY=1 `lumen bench latency` (8 requests of 128/128, FLAGS)
#                                 the same way. ENV_A and ENV_B set variables for one side's runs
#                                 (ENV_A=LUMEN_FP8_FAST_ACCUM=0 with both sides built from one commit
#                                 compares a setting), FLAGS_A and FLAGS_B add flags to one side's
#                                 bench runs (FLAGS_B="--overlap-scheduler on"). Logs go to $OUT (default /tmp/gpu-ab); the
#                                 card, each run's output tok/s or TPOT and the ratio b/a are printed
#                                 last.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=gpu-ab

build_into() { # $1: source folder, $2: target folder, $3: output folder
  (cd "$1" && CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_TARGET_DIR="$2" cargo build --release -p lumen-cli -p lumen-backend --bins --example attention_speed)
  mkdir -p "$3"
  cp "$2/release/lumen" "$2/release/examples/attention_speed" "$3/"
  strip "$3"/*
}

case "${1:-}" in
build)
  rev=${2:?"usage: scripts/gpu_ab.sh build REV (the commit to compare the working tree with)"}
  git rev-parse --verify --quiet "$rev^{commit}" >/dev/null || { echo "gpu_ab: $rev is not a commit of this repository" >&2; exit 2; }
  rm -rf "$DIR" && mkdir -p "$DIR"
  worktree=target/ab-worktree
  git worktree remove --force "$worktree" 2>/dev/null || rm -rf "$worktree"
  git worktree add --detach "$worktree" "$rev" >/dev/null
  build_into "$worktree" "$PWD/target/ab" "$DIR/a"
  git worktree remove --force "$worktree"
  build_into . "$PWD/target" "$DIR/b"
  git rev-parse --short "$rev" >"$DIR/a/commit"
  echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo +changes)" >"$DIR/b/commit"
  mkdir -p device
  tar -cf - "$DIR" | xz -T0 -6 >device/gpu-ab.tar.xz
  du -sh "$DIR" device/gpu-ab.tar.xz
  ;;
run)
  [ -d "$DIR" ] || [ ! -f device/gpu-ab.tar.xz ] || tar -xJf device/gpu-ab.tar.xz
  [ -x "$DIR/a/lumen" ] && [ -x "$DIR/b/lumen" ] || { echo "gpu_ab: $DIR/a and $DIR/b need a build (scripts/gpu_ab.sh build REV, here)" >&2; exit 2; }
  export LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export LUMEN_CACHE_DIR=${LUMEN_CACHE_DIR:-/tmp/lumen-cache}
  OUT=${OUT:-/tmp/gpu-ab}
  MODEL=${MODEL:-llama-3.1-8b}
  REQUESTS=${REQUESTS:-500}
  ISL=${ISL:-2048}
  OSL=${OSL:-128}
  REPEAT=${REPEAT:-2}
  read -r -a flags <<<"${FLAGS---quantization fp8 --kv-cache-dtype fp8}"
  mkdir -p "$OUT"
  card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || true)
  side_env() { if [ "$1" = a ]; then echo "${ENV_A:-}"; else echo "${ENV_B:-}"; fi; }
  side_flags() { if [ "$1" = a ]; then echo "${FLAGS_A:-}"; else echo "${FLAGS_B:-}"; fi; }
  a="a ($(cat $DIR/a/commit)${ENV_A:+ $ENV_A}${FLAGS_A:+ $FLAGS_A})" b="b ($(cat $DIR/b/commit)${ENV_B:+ $ENV_B}${FLAGS_B:+ $FLAGS_B})"
  rows=()
  if [ -n "${SHAPE-prefill}" ]; then
    for side in a b; do
      env $(side_env $side) "$DIR/$side/attention_speed" --shape "${SHAPE-prefill}" >"$OUT/attention_speed_$side.txt" 2>&1 ||
        rows+=("attention_speed of $side failed: see $OUT/attention_speed_$side.txt")
    done
    # Each line's kernel time and TFLOP/s, side by side (the CUDA-core kernel's lines left out).
    rows+=("$(paste "$OUT/attention_speed_a.txt" "$OUT/attention_speed_b.txt" | awk -F'\t' '{
      n = split($1, x, " "); m = split($2, y, " ");
      if (n < 6 || n != m || x[n-3] == "cuda-core" || x[n-2] + 0 <= 0) next;
      shape = x[1]; for (i = 2; i <= n - 5; i++) shape = shape " " x[i];
      printf "attention %-24s %-4s %-11s a %8.1f us  b %8.1f us  b/a %.3f\n", shape, x[n-4], x[n-3], x[n-2], y[n-2], y[n-2] / x[n-2] }')")
  fi
  "$DIR/b/lumen" bench prepare-dataset --model "$MODEL" --output "$OUT/data.jsonl" token-norm-dist --num-requests "$REQUESTS" \
    --input-mean "$ISL" --input-stdev 0 --output-mean "$OSL" --output-stdev 0 >/dev/null
  "$DIR/b/lumen" bench prepare-dataset --model "$MODEL" --output "$OUT/latency.jsonl" token-norm-dist --num-requests 8 \
    --input-mean 128 --input-stdev 0 --output-mean 128 --output-stdev 0 >/dev/null
  figure() { { grep -h "$2" "$1" || true; } | awk '{print $NF}' | tail -1; }
  declare -A sum=([tp_a]=0 [tp_b]=0 [lat_a]=0 [lat_b]=0)
  for i in $(seq 1 "$REPEAT"); do
    for side in b a; do
      log="$OUT/throughput_${side}_$i.txt"
      env $(side_env $side) "$DIR/$side/lumen" bench throughput --device cuda --model "$MODEL" --dataset "$OUT/data.jsonl" --eos-id -1 "${flags[@]}" $(side_flags $side) >"$log" 2>&1 || true
      tps=$(figure "$log" "Total Output Throughput")
      rows+=("throughput $side run $i: ${tps:-failed (see $log)} output tok/s")
      sum[tp_$side]=$(awk -v s="${sum[tp_$side]}" -v x="${tps:-0}" 'BEGIN { print s + x }')
      if [ "${LATENCY:-0}" = 1 ]; then
        log="$OUT/latency_${side}_$i.txt"
        env $(side_env $side) "$DIR/$side/lumen" bench latency --device cuda --model "$MODEL" --dataset "$OUT/latency.jsonl" --eos-id -1 "${flags[@]}" $(side_flags $side) >"$log" 2>&1 || true
        tpot=$(figure "$log" "Average time-per-output-token")
        rows+=("latency $side run $i: TPOT ${tpot:-failed (see $log)} ms")
        sum[lat_$side]=$(awk -v s="${sum[lat_$side]}" -v x="${tpot:-0}" 'BEGIN { print s + x }')
      fi
    done
  done
  echo "== $card; a = $a, b = $b; $MODEL ${flags[*]}, $REQUESTS requests of $ISL/$OSL"
  printf '%s\n' "${rows[@]}"
  ratio() { echo "${sum[$1]} ${sum[$2]}" | awk '$1 > 0 && $2 > 0 { printf "%.4f", $2 / $1; exit } { print "n/a" }'; }
  echo "throughput b/a (sums of the runs): $(ratio tp_a tp_b)"
  if [ "${LATENCY:-0}" = 1 ]; then echo "TPOT b/a (sums of the runs): $(ratio lat_a lat_b)"; fi
  ;;
*)
  echo "usage: scripts/gpu_ab.sh build REV (here) | scripts/gpu_ab.sh run (on the GPU machine)" >&2
  exit 2
  ;;
esac
