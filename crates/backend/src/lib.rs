//! lumen-backend: the operations a model is written against, on the CPU and on CUDA, with the
//! KV-cache storage attention reads, the random-number mixer shared by presets and samplers, and
//! FP8 E4M3 conversion on the host.
//!
//! `cpu` is the reference backend: f32, multithreaded with rayon, and built so that every output
//! row is computed with the same arithmetic whatever else shares its batch (batch invariance).
//! The KV-cache storage that attention reads through block tables lives here too, because it is
//! device memory owned by the backend; which blocks belong to whom is the engine's business.

pub mod activation;
pub mod cpu;
pub mod cuda;
pub mod fp8;
pub mod rng;

pub use activation::ExpertActivation;

/// A step's token word with this bit set is not a token: its other bits name a row of the tokens
/// the step before drew, whose token it takes once that step has drawn it (the step was launched
/// before the host had them; `SAMPLED_TOKEN` in elementwise.cu).
pub const SAMPLED_TOKEN: u32 = 0x8000_0000;

/// The row of the step before's tokens a token word names, or `None` for a plain token.
pub fn sampled_row(word: u32) -> Option<usize> {
    (word & SAMPLED_TOKEN != 0).then_some((word & !SAMPLED_TOKEN) as usize)
}
pub use cpu::kv::{AttentionSeq, KvStorage};
