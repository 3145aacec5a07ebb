# Sourced by the GPU scripts: makes NCCL loadable as libnccl.so (PyTorch's nvidia-nccl wheel
# ships it as libnccl.so.2) and keeps NVLink multicast off.
nccl_lib=$(find $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null) -name 'libnccl.so*' 2>/dev/null | head -1 || true)
if [ -n "$nccl_lib" ]; then
  mkdir -p /tmp/lumen-nccl && ln -sf "$nccl_lib" /tmp/lumen-nccl/libnccl.so
  export LD_LIBRARY_PATH=/tmp/lumen-nccl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
