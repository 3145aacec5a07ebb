//! Memory traffic: copies by direction with their bandwidth, pageable host memory in async copies
//! (which makes them synchronous), synchronous copy calls, and allocation churn from the CUDA API
//! and from the engine's host-allocation rows.

use std::collections::HashMap;

use lumen_trace::model::{GpuOpKind, GpuOpRow, TraceData};
use serde::Serialize;

use crate::measured::{Measured, NO_API_CALLS};
use crate::stats::share;
use crate::text;
use crate::view::{measured, missing, Block};
use crate::LaunchIndex;

/// API call name prefixes that allocate and that free device or pinned memory.
const ALLOC_CALLS: [&str; 2] = ["cuMemAlloc", "cudaMalloc"];
const FREE_CALLS: [&str; 2] = ["cuMemFree", "cudaFree"];

/// Whether an API call allocates or frees device or pinned memory.
pub(crate) fn is_allocation_call(name: &str) -> bool {
    ALLOC_CALLS.iter().chain(&FREE_CALLS).any(|p| name.starts_with(p))
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Memory {
    /// Copies by kind (`HtoD`, `DtoH`, `DtoD`, ..., `unknown`) and memsets, most time first.
    pub transfers: Measured<Vec<Transfer>>,
    /// Async copies whose host memory is pageable.
    pub pageable_async: Measured<CopyTotal>,
    /// Copies launched by a call without `Async` in its name.
    pub synchronous: Measured<SyncCopies>,
    pub api_allocations: Measured<AllocationCalls>,
    pub host_allocations: Measured<HostAllocations>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transfer {
    pub kind: String,
    pub count: usize,
    pub bytes: u64,
    pub total_ns: u64,
    /// Bytes over the time of the operations whose size is known, in GB/s.
    pub bandwidth_gb_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CopyTotal {
    pub count: usize,
    pub bytes: u64,
    pub total_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncCopies {
    pub total: CopyTotal,
    /// The launching API calls by name, most copies first.
    pub calls: Vec<(String, usize)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AllocationCalls {
    pub allocs: CallTotal,
    pub frees: CallTotal,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallTotal {
    pub count: usize,
    pub total_ns: u64,
}

/// Totals of the `allocations` rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostAllocations {
    pub iterations: usize,
    pub count: u64,
    pub bytes: u64,
    pub frees: u64,
    pub kv_blocks_allocated: u64,
    pub kv_blocks_freed: u64,
}

fn duration(op: &GpuOpRow) -> u64 {
    op.end_ns.saturating_sub(op.start_ns)
}

pub fn analyze(trace: &TraceData, launches: &LaunchIndex) -> Memory {
    let copies: Vec<&GpuOpRow> = trace.gpu_ops.iter().filter(|op| op.kind == GpuOpKind::Memcpy).collect();
    let launched: Vec<(&GpuOpRow, &str)> = copies.iter().filter_map(|op| Some((*op, launches.launch_of(op)?.name.as_str()))).collect();
    let no_launch = || {
        if copies.is_empty() {
            "the trace has no memcpy operations".to_string()
        } else {
            "no memcpy has its launch API call in the trace (matched by process and correlation id)".to_string()
        }
    };
    let pageable = launched.iter().filter(|(op, call)| op.pinned == Some(false) && call.contains("Async")).map(|(op, _)| *op);
    let synchronous: Vec<(&GpuOpRow, &str)> = launched.iter().filter(|(_, call)| !call.contains("Async")).copied().collect();
    Memory {
        transfers: transfers(trace),
        pageable_async: Measured::from_option((!launched.is_empty()).then(|| copy_total(pageable)), no_launch),
        synchronous: Measured::from_option((!launched.is_empty()).then(|| sync_copies(&synchronous)), no_launch),
        api_allocations: api_allocations(trace),
        host_allocations: host_allocations(trace),
    }
}

fn transfers(trace: &TraceData) -> Measured<Vec<Transfer>> {
    let mut by_kind: HashMap<String, (usize, u64, u64, u64)> = HashMap::new();
    for op in &trace.gpu_ops {
        let kind = match op.kind {
            GpuOpKind::Memcpy => op.copy_kind.clone().unwrap_or_else(|| "unknown".into()),
            GpuOpKind::Memset => "memset".into(),
            _ => continue,
        };
        let (count, bytes, total_ns, sized_ns) = by_kind.entry(kind).or_default();
        *count += 1;
        *total_ns += duration(op);
        if let Some(b) = op.bytes {
            *bytes += b;
            *sized_ns += duration(op);
        }
    }
    if by_kind.is_empty() {
        return Measured::NotAvailable(if trace.gpu_ops.is_empty() {
            crate::measured::NO_GPU_OPS.into()
        } else {
            "the trace has no memcpy or memset operations".into()
        });
    }
    let mut transfers: Vec<Transfer> = by_kind
        .into_iter()
        .map(|(kind, (count, bytes, total_ns, sized_ns))| Transfer {
            kind,
            count,
            bytes,
            total_ns,
            bandwidth_gb_s: (sized_ns > 0).then(|| bytes as f64 / sized_ns as f64),
        })
        .collect();
    transfers.sort_unstable_by(|a, b| b.total_ns.cmp(&a.total_ns).then(a.kind.cmp(&b.kind)));
    Measured::Available(transfers)
}

fn copy_total<'a>(ops: impl Iterator<Item = &'a GpuOpRow>) -> CopyTotal {
    ops.fold(CopyTotal { count: 0, bytes: 0, total_ns: 0 }, |t, op| CopyTotal {
        count: t.count + 1,
        bytes: t.bytes + op.bytes.unwrap_or(0),
        total_ns: t.total_ns + duration(op),
    })
}

fn sync_copies(copies: &[(&GpuOpRow, &str)]) -> SyncCopies {
    let mut by_call: HashMap<&str, usize> = HashMap::new();
    for (_, call) in copies {
        *by_call.entry(call).or_default() += 1;
    }
    let mut calls: Vec<(String, usize)> = by_call.into_iter().map(|(name, n)| (name.to_string(), n)).collect();
    calls.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    SyncCopies { total: copy_total(copies.iter().map(|(op, _)| *op)), calls }
}

fn api_allocations(trace: &TraceData) -> Measured<AllocationCalls> {
    if trace.api_calls.is_empty() {
        return Measured::NotAvailable(NO_API_CALLS.into());
    }
    let total = |prefixes: [&str; 2]| {
        let calls = trace.api_calls.iter().filter(|c| prefixes.iter().any(|p| c.name.starts_with(p)));
        calls.fold(CallTotal { count: 0, total_ns: 0 }, |t, c| CallTotal {
            count: t.count + 1,
            total_ns: t.total_ns + c.end_ns.saturating_sub(c.start_ns),
        })
    };
    let (allocs, frees) = (total(ALLOC_CALLS), total(FREE_CALLS));
    if allocs.count + frees.count == 0 {
        return Measured::NotAvailable("the trace has no allocation API calls (cuMemAlloc*, cuMemFree*, cudaMalloc*, cudaFree*)".into());
    }
    Measured::Available(AllocationCalls { allocs, frees })
}

fn host_allocations(trace: &TraceData) -> Measured<HostAllocations> {
    let rows = &trace.allocations;
    Measured::from_option(
        (!rows.is_empty()).then(|| HostAllocations {
            iterations: rows.len(),
            count: rows.iter().map(|r| r.count).sum(),
            bytes: rows.iter().map(|r| r.bytes).sum(),
            frees: rows.iter().map(|r| r.frees).sum(),
            kv_blocks_allocated: rows.iter().map(|r| r.kv_blocks_allocated).sum(),
            kv_blocks_freed: rows.iter().map(|r| r.kv_blocks_freed).sum(),
        }),
        || "the trace has no allocation rows; record them with LUMEN_PROFILE_RECORD_ALLOC=1".into(),
    )
}

fn copy_line(t: &CopyTotal) -> String {
    format!("{} copies, {}, {}", t.count, text::bytes(t.bytes), text::duration(t.total_ns as f64))
}

/// The section's blocks, for the terminal and the page.
pub fn view(m: &Memory) -> Vec<Block> {
    let copies = match &m.transfers {
        Measured::Available(transfers) => {
            let all_ns: u64 = transfers.iter().map(|t| t.total_ns).sum();
            let rows = transfers
                .iter()
                .map(|t| {
                    vec![
                        t.kind.clone(),
                        t.count.to_string(),
                        text::bytes(t.bytes),
                        text::duration(t.total_ns as f64),
                        text::percent(share(t.total_ns as f64, all_ns as f64)),
                        t.bandwidth_gb_s.map_or("-".into(), |bw| format!("{bw:.1}")),
                    ]
                })
                .collect();
            Block::Table { header: vec!["kind", "count", "bytes", "time", "share", "GB/s"], left: vec![0], rows }
        }
        Measured::NotAvailable(why) => Block::Facts(vec![missing("copies", why)]),
    };
    let facts = vec![
        measured("pageable async copies", &m.pageable_async, copy_line),
        measured("synchronous copies", &m.synchronous, |s| {
            let calls: Vec<String> = s.calls.iter().map(|(name, n)| format!("{name} {n}")).collect();
            let calls = if calls.is_empty() { String::new() } else { format!(" ({})", calls.join(", ")) };
            format!("{}{calls}", copy_line(&s.total))
        }),
        measured("allocation calls", &m.api_allocations, |a| {
            format!(
                "{} allocs ({}), {} frees ({})",
                a.allocs.count,
                text::duration(a.allocs.total_ns as f64),
                a.frees.count,
                text::duration(a.frees.total_ns as f64)
            )
        }),
        measured("host allocations", &m.host_allocations, |h| {
            format!(
                "{} allocations, {}, {} frees over {} iterations; KV blocks +{} -{}",
                h.count,
                text::bytes(h.bytes),
                h.frees,
                h.iterations,
                h.kv_blocks_allocated,
                h.kv_blocks_freed
            )
        }),
    ];
    vec![copies, Block::Facts(facts)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_test_support::rows::{api, op};

    fn copy(kind: &str, start: u64, end: u64, bytes: Option<u64>, pinned: Option<bool>, correlation: u64) -> GpuOpRow {
        GpuOpRow { copy_kind: Some(kind.into()), bytes, pinned, ..op(GpuOpKind::Memcpy, start, end, correlation) }
    }

    #[test]
    fn bandwidth_per_copy_kind() {
        let trace = TraceData {
            gpu_ops: vec![
                copy("HtoD", 0, 1_000, Some(10_000), Some(true), 1),
                copy("HtoD", 2_000, 3_000, Some(30_000), Some(true), 2),
                copy("HtoD", 4_000, 4_500, None, Some(true), 3),
                copy("DtoH", 5_000, 5_100, Some(100), Some(false), 4),
                GpuOpRow { bytes: Some(64), ..op(GpuOpKind::Memset, 6_000, 6_010, 5) },
            ],
            ..TraceData::default()
        };
        let m = analyze(&trace, &LaunchIndex::new(&trace));
        let transfers: Vec<(&str, usize, u64, u64, Option<f64>)> =
            m.transfers.get().unwrap().iter().map(|t| (t.kind.as_str(), t.count, t.bytes, t.total_ns, t.bandwidth_gb_s)).collect();
        assert_eq!(transfers, [("HtoD", 3, 40_000, 2_500, Some(20.0)), ("DtoH", 1, 100, 100, Some(1.0)), ("memset", 1, 64, 10, Some(6.4))]);
        assert!(matches!(&m.pageable_async, Measured::NotAvailable(why) if why.contains("launch API call")));
        assert_eq!(m.api_allocations, Measured::NotAvailable(NO_API_CALLS.into()));
    }

    #[test]
    fn pageable_async_and_synchronous_copies() {
        let trace = TraceData {
            gpu_ops: vec![
                copy("HtoD", 0, 100, Some(1_000), Some(false), 1),
                copy("HtoD", 200, 300, Some(1_000), Some(true), 2),
                copy("DtoH", 400, 450, Some(500), Some(false), 3),
                copy("HtoD", 500, 600, Some(7), Some(false), 4),
            ],
            api_calls: vec![
                api("cuMemcpyHtoDAsync_v2", 0, 10, 1),
                api("cudaMemcpyAsync", 190, 195, 2),
                api("cuMemcpyDtoH_v2", 390, 460, 3),
                api("cudaMemcpy", 490, 610, 4),
                api("cuMemAlloc_v2", 700, 750, 5),
                api("cudaMallocHost", 800, 900, 6),
                api("cuMemFree_v2", 900, 910, 7),
            ],
            ..TraceData::default()
        };
        let m = analyze(&trace, &LaunchIndex::new(&trace));
        assert_eq!(m.pageable_async, Measured::Available(CopyTotal { count: 1, bytes: 1_000, total_ns: 100 }));
        let s = m.synchronous.get().unwrap();
        assert_eq!(s.total, CopyTotal { count: 2, bytes: 507, total_ns: 150 });
        assert_eq!(s.calls, [("cuMemcpyDtoH_v2".to_string(), 1), ("cudaMemcpy".to_string(), 1)]);
        let a = m.api_allocations.get().unwrap();
        assert_eq!((a.allocs.count, a.allocs.total_ns, a.frees.count, a.frees.total_ns), (2, 150, 1, 10));
    }
}
