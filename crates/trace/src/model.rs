//! The trace as data: the rows of a `.lumen` file held in memory. The recorder produces them, the
//! SQLite store writes and reads them, and the exporters turn them into Perfetto and Chrome
//! traces. Every timestamp is nanoseconds on [`crate::now_ns`]'s clock.

use serde::{Deserialize, Serialize};

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

/// One engine iteration's composition and timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
