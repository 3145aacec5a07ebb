//! The llama-family decoder on one GPU: the layer plan filled with bf16 device tensors
//! ([`weights`]) and the forward pass that walks it ([`forward`]). The engine's CUDA runner owns
//! the rest of a step: staging, the KV cache's blocks, CUDA graphs, sampling.

pub mod forward;
pub mod weights;

pub use forward::{enqueue_forward, Activations, KvCache, StepInputs, StepShape};
pub use weights::CudaWeights;
