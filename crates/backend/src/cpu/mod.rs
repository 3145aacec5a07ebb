//! The CPU backend: f32 kernels for the llama-family decoder.
//!
//! Each kernel's result for one token depends only on that token's inputs, never on the batch it
//! was computed in: reductions run in a fixed order and parallelism only splits independent
//! outputs. This makes greedy decoding batch-invariant, which the engine's tests rely on.

pub mod attention;
pub mod kv;
pub mod matmul;
pub mod norm;
pub mod rope;

pub use attention::paged_attention;
pub use matmul::matmul_t;
pub use norm::{add_rms_norm, rms_norm, rms_norm_heads, silu_mul};
pub use rope::{apply_rope, RopeTable};

/// A raw pointer that rayon tasks may share when each writes a disjoint part of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub *mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}
