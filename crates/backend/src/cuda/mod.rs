//! The CUDA backend: the device and its memory ([`device`]), typed tensors ([`tensor`]), run-time
//! compiled kernels ([`compile`], [`kernels`]), cuBLASLt matrix products ([`gemm`]) and the
//! linear-layer dispatch between them and the GEMV kernel ([`linear`]), and NCCL's collectives
//! between the GPUs of one process ([`nccl`]). Everything loads the
//! CUDA libraries at run time, so the binary builds and runs where there is no GPU; there, opening
//! a device returns an error that says so.

pub mod compile;
pub mod device;
pub mod gemm;
pub mod kernels;
pub mod linear;
pub mod nccl;
pub mod tensor;

pub use device::{driver_present, DeviceBuffer, DeviceInfo, Event, Gpu, Graph, PinnedBuffer};
pub use gemm::Gemm;
pub use kernels::{moe_max_tiles, AttentionArgs, Fp8Rows, Kernels, MlaShape, RopeArgs, RowScales, MLA_BLOCK_ROWS, MOE_TILE_ROWS};
pub use linear::Linear;
pub use tensor::{DType, DeviceTensor, Tensor};

/// bf16 bits of `x`, rounded to nearest even (the kernels' own rounding).
pub fn to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}
