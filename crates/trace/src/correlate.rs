//! Joins GPU operations to the API calls that issued them: the same process and CUPTI
//! correlation id. The exporters draw launch flows from it and the analyzer measures launch
//! overhead, queue time and gap causes with it.

use crate::model::{ApiCallRow, GpuOpRow, TraceData};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes the integer keys of [`LaunchIndex`] with one rotate, xor and multiply per integer: for
/// millions of lookups several times cheaper than the default SipHash, and enough to spread ids.
#[derive(Default)]
struct IdHasher(u64);

impl IdHasher {
    fn add(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|&b| self.add(b.into()));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(n.into());
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The API call that issued each GPU operation, found by process and correlation id.
pub struct LaunchIndex<'a> {
    calls: &'a [ApiCallRow],
    by_id: HashMap<(u32, u64), usize, BuildHasherDefault<IdHasher>>,
}

impl<'a> LaunchIndex<'a> {
    pub fn new(trace: &'a TraceData) -> Self {
        let mut calls = HashMap::with_capacity_and_hasher(trace.api_calls.len(), BuildHasherDefault::default());
        for (i, call) in trace.api_calls.iter().enumerate() {
            if let Some(correlation) = call.correlation {
                calls.entry((call.pid, correlation)).or_insert(i);
            }
        }
        LaunchIndex { calls: &trace.api_calls, by_id: calls }
    }

    /// The index in `api_calls` of the call that issued `op` (the first, should several share
    /// its process and correlation id).
    pub fn call_index_of(&self, op: &GpuOpRow) -> Option<usize> {
        self.by_id.get(&(op.pid, op.correlation?)).copied()
    }

    /// The call that issued `op`.
    pub fn launch_of(&self, op: &GpuOpRow) -> Option<&'a ApiCallRow> {
        self.call_index_of(op).map(|i| &self.calls[i])
    }

    /// Whether `op` ran as a node of a CUDA graph: it carries the collector's graph ids, or (in
    /// traces that keep none, such as torch.profiler's) a graph launch call issued it.
    pub fn from_graph(&self, op: &GpuOpRow) -> bool {
        op.graph_id.is_some() || op.graph_node_id.is_some() || self.launch_of(op).is_some_and(|call| is_graph_launch(&call.name))
    }
}

/// Whether an API call launches a CUDA graph (`cuGraphLaunch`, `cudaGraphLaunch` and their variants).
pub fn is_graph_launch(name: &str) -> bool {
    name.contains("GraphLaunch")
}
