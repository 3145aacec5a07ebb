//! The CUDA backend: the device and its memory ([`device`]), run-time compiled kernels
//! ([`compile`], [`kernels`]) and cuBLASLt matrix products ([`gemm`]). Everything loads the
//! CUDA libraries at run time, so the binary builds and runs where there is no GPU; there, opening
//! a device returns an error that says so.

pub mod compile;
pub mod device;
pub mod gemm;
pub mod kernels;

pub use device::{driver_present, DeviceBuffer, DeviceInfo, Event, Gpu, Graph, PinnedBuffer};
pub use gemm::Gemm;
pub use kernels::{AttentionArgs, Kernels, RopeArgs};

/// bf16 bits of `x`, rounded to nearest even (the kernels' own rounding).
pub fn to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}
