//! The llama-family decoder on one GPU, or split over several by tensor parallelism: the layer
//! plan (or a rank's plan) filled with bf16 device tensors ([`weights`]) and the forward pass that
//! walks it ([`forward`]), with a rank's collectives. The engine's CUDA runner owns the rest of a
//! step: staging, the KV cache's blocks, CUDA graphs, sampling.

pub mod forward;
pub mod weights;

pub use forward::{
    attention_blocks_per_token, enqueue_forward, expert_load, expert_load_words, mla_shape, moe_graphable, queue_expert_load, Activations,
    KvCache, RankCollectives, StepInputs, StepShape, MOE_DEVICE_SLOTS,
};
pub use weights::CudaWeights;

use crate::config::ModelConfig;

/// One tensor-parallel rank on its GPU: the rank's config (its heads, KV heads, intermediate
/// columns and head rows, as `tensor_parallel::rank_config` gives them) and its shard of the
/// weights.
pub struct RankShard {
    pub config: ModelConfig,
    pub weights: CudaWeights,
}
