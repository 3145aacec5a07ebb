//! Per-iteration statistics, TensorRT-LLM's IterationStats fields that apply to lumen.

use lumen_trace::model::max_over_mean;
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct IterationStats {
    pub iter: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Wall time of the iteration, from its launch to its finish, in milliseconds. `start_ns`
    /// and `end_ns` bound the executor loop's pass that launched it, which with the overlap
    /// scheduler ends before the iteration is finished.
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
    /// The part of `flops` in FP8 products.
    pub fp8_flops: f64,
    /// The part of `flops` in attention over the sequences' contexts.
    pub attention_flops: f64,
    /// Mixture-of-experts models: for each MoE layer in layer order, how many (token, expert)
    /// assignments each expert received in this step. Empty for dense models. The trace keeps
    /// it whole; the iteration log keeps each layer's max/mean ([`IterationStats::expert_balance`]).
    #[serde(skip)]
    pub expert_load: Vec<Vec<u32>>,
    /// Each MoE layer's busiest expert's load over the mean load, in layer order (1.0 is
    /// perfectly balanced); empty for dense models and steps without tokens.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expert_max_over_mean: Vec<f64>,
}

impl IterationStats {
    /// Fills [`IterationStats::expert_max_over_mean`] from [`IterationStats::expert_load`].
    pub fn expert_balance(&mut self) {
        self.expert_max_over_mean = self.expert_load.iter().filter_map(|loads| max_over_mean(loads)).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expert_balance_gives_each_loaded_layers_busiest_over_mean() {
        let mut stats = IterationStats { expert_load: vec![vec![1, 1], vec![0, 0], vec![3, 1]], ..Default::default() };
        stats.expert_balance();
        assert_eq!(stats.expert_max_over_mean, [1.0, 1.5]);
    }
}
