//! Per-iteration statistics, TensorRT-LLM's IterationStats fields that apply to lumen.

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct IterationStats {
    pub iter: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Wall time of the iteration, in milliseconds.
    pub iter_latency_ms: f64,
    /// Host time spent in the step (on the CPU backend, the whole step).
    pub host_step_ms: f64,
    /// Device time of the step (CUDA events around it); `None` on the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_step_ms: Option<f64>,
    pub num_queued_requests: usize,
    pub num_active_requests: usize,
    pub num_completed_requests: usize,
    pub num_preempted_requests: usize,
    pub num_ctx_requests: usize,
    pub num_ctx_tokens: usize,
    pub num_gen_requests: usize,
    pub num_gen_tokens: usize,
    pub max_num_blocks: usize,
    pub used_num_blocks: usize,
    pub free_num_blocks: usize,
    pub tokens_per_block: usize,
    /// KV blocks handed out and returned during the iteration.
    pub kv_blocks_allocated: u64,
    pub kv_blocks_freed: u64,
    /// Host allocations, frees and allocated bytes during the iteration (counted by the `lumen`
    /// binary's allocator; zero where it is not installed).
    pub host_allocations: u64,
    pub host_frees: u64,
    pub host_alloc_bytes: u64,
    /// What the forward pass read and computed, counted from the model's shape and the batch
    /// (see [`crate::work`]): weight bytes with the embedding rows gathered, cached K/V bytes,
    /// and floating-point operations. Zero when no token ran.
    pub weight_bytes: u64,
    pub kv_bytes_read: u64,
    pub flops: f64,
}
