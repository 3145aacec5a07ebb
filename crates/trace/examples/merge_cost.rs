//! What merging per-process traces costs at a realistic size:
//! `cargo run --release -p lumen-trace --example merge_cost [GPU_OPS]` (default 1,000,000).
//! Writes two per-process traces that share the GPU ops (with an API call each) between them,
//! times `merge_traces` over them, and prints the rate.

use anyhow::{Context, Result};
use lumen_trace::merge::merge_traces;
use lumen_trace::model::{ApiCallRow, GpuOpKind, GpuOpRow, ThreadRow};
use lumen_trace::store::{GpuBatch, TraceWriter};
use std::path::{Path, PathBuf};
use std::time::Instant;

const BATCH: u64 = 50_000;

fn op(pid: u32, i: u64) -> GpuOpRow {
    let kernel = !i.is_multiple_of(10);
    GpuOpRow {
        kind: if kernel { GpuOpKind::Kernel } else { GpuOpKind::Memcpy },
        start_ns: i * 2_000 + 500,
        end_ns: i * 2_000 + 1_900,
        pid,
        device: (i % 2) as u32,
        stream: Some(7 + i % 4),
        correlation: Some(i),
        name: if kernel { format!("kernel_{}", i % 200) } else { "memcpy HtoD".to_string() },
        grid: kernel.then_some([128, 4, 1]),
        block: kernel.then_some([256, 1, 1]),
        registers: kernel.then_some(64),
        shared_mem_bytes: kernel.then_some(16_384),
        bytes: (!kernel).then_some(1 << 20),
        copy_kind: (!kernel).then(|| "HtoD".to_string()),
        pinned: (!kernel).then_some(true),
        graph_id: None,
        graph_node_id: None,
    }
}

fn write_process(path: &Path, pid: u32, ops: u64) -> Result<()> {
    let mut w = TraceWriter::create(path, &[("pid".to_string(), pid.to_string())])?;
    let threads = [ThreadRow { pid, tid: u64::from(pid) + 1, name: "main".to_string() }];
    w.append_gpu(&GpuBatch { threads: &threads, ..Default::default() })?;
    for first in (0..ops).step_by(BATCH as usize) {
        let range = first..(first + BATCH).min(ops);
        let gpu_ops: Vec<_> = range.clone().map(|i| op(pid, i)).collect();
        let api_calls: Vec<_> = range
            .map(|i| ApiCallRow {
                start_ns: i * 2_000,
                end_ns: i * 2_000 + 200,
                pid,
                tid: u64::from(pid) + 1,
                name: "cudaLaunchKernel".to_string(),
                correlation: Some(i),
                result: Some(0),
            })
            .collect();
        w.append_gpu(&GpuBatch { gpu_ops: &gpu_ops, api_calls: &api_calls, ..Default::default() })?;
    }
    w.finish()?;
    Ok(())
}

fn main() -> Result<()> {
    let ops: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse().with_context(|| format!("GPU_OPS {n:?} is not a count"))?,
        None => 1_000_000,
    };
    let dir = std::env::temp_dir().join(format!("lumen-merge-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let inputs: Vec<PathBuf> = [1001, 2002].iter().map(|pid| dir.join(format!("{pid}.lumen"))).collect();
    let started = Instant::now();
    write_process(&inputs[0], 1001, ops / 2)?;
    write_process(&inputs[1], 2002, ops - ops / 2)?;
    let written = started.elapsed();
    let output = dir.join("merged.lumen");
    let started = Instant::now();
    let summary = merge_traces(&inputs, &output, &[])?;
    let merged = started.elapsed();
    let size = std::fs::metadata(&output).with_context(|| output.display().to_string())?.len();
    let rows: u64 = summary.inputs.iter().map(|i| i.rows_of("gpu_ops") + i.rows_of("api_calls")).sum();
    println!("wrote 2 inputs ({ops} gpu_ops, {ops} api_calls) in {:.2} s", written.as_secs_f64());
    println!(
        "merged {rows} rows in {:.2} s ({:.0} rows/s), output {:.1} MiB",
        merged.as_secs_f64(),
        rows as f64 / merged.as_secs_f64(),
        size as f64 / (1 << 20) as f64
    );
    std::fs::remove_dir_all(&dir).with_context(|| dir.display().to_string())
}
