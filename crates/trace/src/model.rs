//! The trace as data: the rows of a `.lumen` file held in memory. The recorder and the CUDA
//! collector produce them, the SQLite store writes and reads them, and the exporters turn them into
//! Perfetto and Chrome traces. Every timestamp is nanoseconds on one clock: [`crate::now_ns`]'s for
//! the engine's own rows; a trace that merges several processes needs them all on a shared one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A process that contributed rows (named by its command line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessRow {
    pub pid: u32,
    pub name: String,
}

/// A named thread of a process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadRow {
    pub pid: u32,
    pub tid: u64,
    pub name: String,
}

/// A range: an engine phase, an iteration, an NVTX-style range, an allocation or a wait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRow {
    pub start_ns: u64,
    pub end_ns: u64,
    pub tid: u64,
    pub name: String,
    pub category: String,
    /// Nesting depth on its thread, 0 for the outermost.
    pub depth: u32,
    /// The engine iteration it belongs to, when it happened inside one.
    pub iteration: Option<u64>,
    /// Extra key/values as a JSON object text, when any.
    pub args: Option<String>,
}

/// An instant event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarkRow {
    pub ts_ns: u64,
    pub tid: u64,
    pub name: String,
    pub category: String,
    pub iteration: Option<u64>,
    pub args: Option<String>,
}

/// One sample of a counter track (KV utilisation, batch size, allocated bytes, GPU metrics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CounterRow {
    pub ts_ns: u64,
    pub name: String,
    pub device: Option<u32>,
    pub value: f64,
}

/// One engine iteration's composition, timing, and the work it did. The work fields are the
/// engine's own count of what the scheduled batch moved and computed (not measured by the GPU);
/// they are `None` in traces that do not carry them (schema versions 1 and 2, imported traces).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IterationRow {
    pub iter: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub ctx_reqs: u64,
    pub gen_reqs: u64,
    pub ctx_tokens: u64,
    pub gen_tokens: u64,
    pub kv_used_blocks: u64,
    pub kv_total_blocks: u64,
    pub host_ms: f64,
    pub device_ms: Option<f64>,
    /// Requests still waiting for admission after the iteration's schedule.
    pub queued_reqs: Option<u64>,
    /// Bytes of weights one forward pass over the batch reads: every layer's matrices and norms,
    /// the final norm and the output projection, plus the embedding rows gathered.
    pub weight_bytes: Option<u64>,
    /// Bytes of cached K and V the batch's attention reads (each sequence's context, every layer).
    pub kv_bytes_read: Option<u64>,
    /// Floating-point operations of the forward pass: the matrix products and attention.
    pub flops: Option<f64>,
    /// The part of `flops` that runs on FP8 tensor cores (the layers' products of an FP8 model);
    /// `None` in traces that do not carry it (schema versions 1 to 4, imported traces).
    #[serde(default)]
    pub fp8_flops: Option<f64>,
    /// The part of `flops` that is attention (Q·Kᵀ and P·V over each sequence's context), the
    /// rest being the matrix products; `None` in traces that do not carry it (schema versions 1
    /// to 5, imported traces).
    #[serde(default)]
    pub attention_flops: Option<f64>,
}

/// Host allocations and KV-block traffic during one iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocationRow {
    pub iteration: u64,
    pub count: u64,
    pub bytes: u64,
    pub frees: u64,
    pub kv_blocks_allocated: u64,
    pub kv_blocks_freed: u64,
}

/// One iteration's expert load in one mixture-of-experts layer: how many (token, expert)
/// assignments each expert received, in expert order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertLoadRow {
    pub iteration: u64,
    /// The ordinal of the layer among the model's mixture-of-experts layers (0 for the first).
    pub layer: u32,
    pub tokens: Vec<u64>,
}

/// The sum and the largest of `loads`; `None` when there are none or all are 0.
fn total_and_max<T: Copy + Into<u64>>(loads: &[T]) -> Option<(u64, u64)> {
    let total: u64 = loads.iter().map(|&l| l.into()).sum();
    let max = loads.iter().map(|&l| l.into()).max()?;
    (total > 0).then_some((total, max))
}

/// The largest of `loads` over their mean (1.0 when even): how much more the busiest expert of a
/// mixture-of-experts layer received than the average; `None` when there are none or all are 0.
pub fn max_over_mean<T: Copy + Into<u64>>(loads: &[T]) -> Option<f64> {
    let (total, max) = total_and_max(loads)?;
    Some(max as f64 * loads.len() as f64 / total as f64)
}

/// The largest of `loads` over the largest a perfectly balanced spread of the same total would
/// give, ⌈total / experts⌉ (1.0 when balanced): how much more the busiest expert received than it
/// had to. Unlike [`max_over_mean`] it reads 1.0 for a step with fewer assignments than experts
/// whose experts each got one (batch-1 decode: 8 of 128 experts hold one token each); `None` when
/// there are none or all are 0.
pub fn max_over_balanced<T: Copy + Into<u64>>(loads: &[T]) -> Option<f64> {
    let (total, max) = total_and_max(loads)?;
    Some(max as f64 / total.div_ceil(loads.len() as u64) as f64)
}

/// One request's life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRow {
    pub id: u64,
    pub arrival_ns: u64,
    pub first_token_ns: Option<u64>,
    pub end_ns: u64,
    pub input_len: u64,
    pub output_len: u64,
}

/// What a [`GpuOpRow`] is; stored as its lower-case name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuOpKind {
    #[default]
    Kernel,
    Memcpy,
    Memset,
    /// A synchronisation (stream, event, context or device wait).
    Sync,
    /// A whole CUDA graph launch, when graphs are traced as one activity.
    Graph,
}

impl GpuOpKind {
    pub const ALL: [GpuOpKind; 5] = [GpuOpKind::Kernel, GpuOpKind::Memcpy, GpuOpKind::Memset, GpuOpKind::Sync, GpuOpKind::Graph];

    pub fn as_str(self) -> &'static str {
        match self {
            GpuOpKind::Kernel => "kernel",
            GpuOpKind::Memcpy => "memcpy",
            GpuOpKind::Memset => "memset",
            GpuOpKind::Sync => "sync",
            GpuOpKind::Graph => "graph",
        }
    }
}

impl fmt::Display for GpuOpKind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GpuOpKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        GpuOpKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown GPU op kind {s:?} (expected kernel, memcpy, memset, sync or graph)"))
    }
}

/// One piece of GPU activity: a kernel, a copy, a memset, a synchronisation or a graph launch.
/// Fields that do not apply to the kind are `None` (the default, for building rows with `..`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuOpRow {
    pub kind: GpuOpKind,
    pub start_ns: u64,
    pub end_ns: u64,
    /// The process that issued it.
    pub pid: u32,
    pub device: u32,
    pub stream: Option<u64>,
    /// Matches the [`ApiCallRow::correlation`] of the API call that issued it, in the same process.
    pub correlation: Option<u64>,
    /// The kernel name; for other kinds a short description such as `memcpy HtoD`.
    pub name: String,
    pub grid: Option<[u32; 3]>,
    pub block: Option<[u32; 3]>,
    pub registers: Option<u32>,
    pub shared_mem_bytes: Option<u64>,
    pub bytes: Option<u64>,
    /// The copy direction, such as `HtoD`, `DtoH`, `DtoD`.
    pub copy_kind: Option<String>,
    /// Whether the host side of a copy is page-locked.
    pub pinned: Option<bool>,
    pub graph_id: Option<u64>,
    pub graph_node_id: Option<u64>,
}

/// One CUDA runtime or driver API call on a CPU thread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiCallRow {
    pub start_ns: u64,
    pub end_ns: u64,
    pub pid: u32,
    pub tid: u64,
    pub name: String,
    pub correlation: Option<u64>,
    /// The call's return code.
    pub result: Option<i64>,
}

/// Everything a trace holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceData {
    /// Key/value facts: schema version, command, host, backend, model, windows.
    pub meta: Vec<(String, String)>,
    pub threads: Vec<ThreadRow>,
    pub spans: Vec<SpanRow>,
    pub marks: Vec<MarkRow>,
    pub counters: Vec<CounterRow>,
    pub iterations: Vec<IterationRow>,
    pub requests: Vec<RequestRow>,
    pub allocations: Vec<AllocationRow>,
    pub expert_loads: Vec<ExpertLoadRow>,
    pub processes: Vec<ProcessRow>,
    pub gpu_ops: Vec<GpuOpRow>,
    pub api_calls: Vec<ApiCallRow>,
}

impl TraceData {
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The process id the trace was recorded in (`meta.pid`), or 1.
    pub fn pid(&self) -> u32 {
        self.meta("pid").and_then(|p| p.parse().ok()).unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_over_mean_is_the_busiest_expert_against_the_mean() {
        assert_eq!(max_over_mean(&[2u32, 2, 2, 2]), Some(1.0));
        // 12 assignments over 4 experts: mean 3, busiest 6.
        assert_eq!(max_over_mean(&[6u64, 3, 3, 0]), Some(2.0));
        assert_eq!(max_over_mean(&[0u32, 0]), None);
        assert_eq!(max_over_mean::<u32>(&[]), None);
    }

    #[test]
    fn max_over_balanced_measures_the_busiest_expert_against_the_best_spread() {
        assert_eq!(max_over_balanced(&[6u64, 3, 3, 0]), Some(2.0));
        // Batch 1, top 2 of 8: two experts with one token each is as balanced as it gets.
        assert_eq!(max_over_balanced(&[0u32, 1, 0, 0, 1, 0, 0, 0]), Some(1.0));
        assert_eq!(max_over_balanced(&[0u32, 2, 0, 0, 0, 0, 0, 0]), Some(2.0));
        // 5 over 4 experts: the best spread's busiest holds 2.
        assert_eq!(max_over_balanced(&[2u32, 1, 1, 1]), Some(1.0));
        assert_eq!(max_over_balanced(&[0u32, 0]), None);
    }

    #[test]
    fn gpu_op_kinds_round_trip_through_text() {
        for kind in GpuOpKind::ALL {
            assert_eq!(kind.as_str().parse::<GpuOpKind>(), Ok(kind));
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{kind}\""));
        }
        let err = "Kernel".parse::<GpuOpKind>().unwrap_err();
        assert!(err.contains("\"Kernel\"") && err.contains("expected kernel, memcpy"), "{err}");
    }
}
