//! The llama-family decoder on the CUDA backend: bf16 weights on the device ([`weights`]) and
//! the runner that owns a step's device state ([`runner`]).

pub mod runner;
pub mod weights;

pub use runner::{CudaRunner, RunnerConfig, SampleParams, INVARIANT_SPLIT_TOKENS};
pub use weights::CudaWeights;
