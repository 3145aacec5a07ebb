//! `lumen trace`: look inside a trace (`info`), convert it for other viewers (`export`), join
//! the traces of several processes into one (`merge`) and convert a torch.profiler trace into a
//! `.lumen` one (`import`).

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use lumen_trace::export::chrome::write_chrome_json;
use lumen_trace::export::perfetto::to_perfetto;
use lumen_trace::kineto::{describe_counts, import_kineto};
use lumen_trace::merge::{differing_clocks, merge_traces};
use lumen_trace::model::{GpuOpKind, TraceData};
use lumen_trace::output::{check_outputs, print_report, AtomicFile, Named};
use lumen_trace::store::{read_meta, read_trace, table_counts};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum TraceCommand {
    /// Print what a trace holds: time span, windows, iterations, processes, GPU work, rows per table.
    Info { trace: PathBuf },
    /// Convert a trace for Perfetto (protobuf) or chrome://tracing (JSON).
    Export {
        trace: PathBuf,
        #[arg(long, value_enum)]
        format: ExportFormat,
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Merge per-process traces into one (each keeps its pid; the first input's meta heads the result).
    Merge {
        /// The merged trace to write (replaced if it exists; it may not be one of the inputs).
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// The traces to merge, in order: iterations and requests come from the first that has any.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Merge traces whose times are on different clocks (a torch.profiler import with a lumen
        /// trace): their rows keep their own times and do not line up.
        #[arg(long)]
        allow_clock_mismatch: bool,
    },
    /// Convert a torch.profiler / Kineto Chrome-JSON trace into a .lumen trace.
    Import {
        /// The Kineto trace (`export_chrome_trace` output, `{"traceEvents": [...], ...}`).
        input: PathBuf,
        /// The .lumen trace to write (replaced if it exists).
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Perfetto,
    Chrome,
}

pub fn run(cmd: TraceCommand) -> Result<()> {
    match cmd {
        TraceCommand::Info { trace } => info(&trace),
        TraceCommand::Export { trace, format, output } => {
            check_outputs(&[Named::new("-o", &output)], &[Named::new("TRACE", &trace)])?;
            let data = read_trace(&trace)?;
            let mut out = AtomicFile::create(&output)?;
            match format {
                ExportFormat::Perfetto => out.write_all(&to_perfetto(&data)),
                ExportFormat::Chrome => write_chrome_json(&data, &mut out),
            }
            .with_context(|| format!("cannot write {}", output.display()))?;
            out.commit()?;
            lumen_trace::status!(
                "[lumen] wrote {} ({} spans, {} marks, {} counter samples, {} GPU ops, {} API calls)",
                output.display(),
                data.spans.len(),
                data.marks.len(),
                data.counters.len(),
                data.gpu_ops.len(),
                data.api_calls.len()
            );
            Ok(())
        }
        TraceCommand::Merge { output, inputs, allow_clock_mismatch } => merge(&inputs, &output, allow_clock_mismatch),
        TraceCommand::Import { input, output } => import(&input, &output),
    }
}

fn info(path: &Path) -> Result<()> {
    let t = read_trace(path)?;
    let counts = table_counts(path)?;
    let mut out = String::new();
    out.push_str(&format!("trace      {}\n", path.display()));
    for key in ["command", "host", "backend", "model", "windows", "merged_from", "complete"] {
        match t.meta(key) {
            Some(v) if key == "merged_from" => out.push_str(&format!("merged     from {v} traces\n")),
            Some(v) => out.push_str(&format!("{key:<10} {v}\n")),
            None => {}
        }
    }
    if let Some((a, b)) = time_span(&t) {
        out.push_str(&format!("span       {:.3} ms\n", (b - a) as f64 / 1e6));
    }
    if let (Some(first), Some(last)) = (t.iterations.first(), t.iterations.last()) {
        out.push_str(&format!("iterations {} ({}..={})\n", t.iterations.len(), first.iter, last.iter));
    }
    if !t.processes.is_empty() {
        let names: Vec<String> = t.processes.iter().map(|p| format!("{} {}", p.pid, p.name)).collect();
        out.push_str(&format!("processes  {} ({})\n", t.processes.len(), names.join(", ")));
    }
    let kinds: Vec<String> = GpuOpKind::ALL
        .into_iter()
        .map(|kind| (kind, t.gpu_ops.iter().filter(|g| g.kind == kind).count()))
        .filter(|&(_, n)| n > 0)
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    if kinds.is_empty() {
        out.push_str("gpu ops    0\n");
    } else {
        out.push_str(&format!("gpu ops    {} ({})\n", t.gpu_ops.len(), kinds.join(", ")));
    }
    out.push_str(&format!("api calls  {}\n", t.api_calls.len()));
    out.push_str("rows:\n");
    for (table, n) in counts {
        out.push_str(&format!("  {table:<12} {n}\n"));
    }
    print_report(&out)
}

/// The first start and last end over spans, iterations, GPU ops and API calls.
fn time_span(t: &TraceData) -> Option<(u64, u64)> {
    let spans = t.spans.iter().map(|s| (s.start_ns, s.end_ns));
    let iterations = t.iterations.iter().map(|i| (i.start_ns, i.end_ns));
    let gpu = t.gpu_ops.iter().map(|g| (g.start_ns, g.end_ns));
    let api = t.api_calls.iter().map(|a| (a.start_ns, a.end_ns));
    spans.chain(iterations).chain(gpu).chain(api).fold(None, |acc, (start, end)| match acc {
        None => Some((start, end)),
        Some((a, b)) => Some((a.min(start), b.max(end))),
    })
}

fn merge(inputs: &[PathBuf], output: &Path, allow_clock_mismatch: bool) -> Result<()> {
    let named: Vec<Named> = inputs.iter().map(|p| Named::new("input", p)).collect();
    check_outputs(&[Named::new("-o", output)], &named)?;
    if let Some(clocks) = differing_clocks(inputs)? {
        let listed: Vec<String> = clocks.iter().map(|(p, c)| format!("{} ({c})", p.display())).collect();
        if !allow_clock_mismatch {
            bail!(
                "the inputs' times are on different clocks: {}; their rows would not line up (--allow-clock-mismatch merges them anyway)",
                listed.join(", ")
            );
        }
        lumen_trace::status!("[lumen] merging traces on different clocks: {}", listed.join(", "));
    }
    // The first input's meta, then what only later inputs know (the recorder's GPU and model
    // beside a collector trace, say).
    let mut meta: Vec<(String, String)> = Vec::new();
    for input in inputs {
        for (key, value) in read_meta(input)? {
            if !meta.iter().any(|(k, _)| *k == key) {
                meta.push((key, value));
            }
        }
    }
    let summary = merge_traces(inputs, output, &meta)?;
    lumen_trace::status!(
        "[lumen] merged {} trace(s) into {} ({} processes{})",
        summary.inputs.len(),
        output.display(),
        summary.processes,
        if summary.complete { "" } else { "; incomplete: an input's writer did not finish" }
    );
    let owner = summary.inputs.iter().find(|i| i.dropped.is_empty() && (i.rows_of("iterations") + i.rows_of("requests")) > 0);
    for input in &summary.inputs {
        let rows: Vec<String> = input.rows.iter().filter(|(_, n)| *n > 0).map(|(table, n)| format!("{table} {n}")).collect();
        let rows = if rows.is_empty() { "no rows".to_string() } else { rows.join(", ") };
        let state = if input.complete { "" } else { " (incomplete)" };
        lumen_trace::status!("  {}{state}: {rows}", input.path.display());
        if !input.dropped.is_empty() {
            let dropped: Vec<String> = input.dropped.iter().map(|(table, n)| format!("{n} {table}")).collect();
            let kept = owner.map_or(String::new(), |o| format!("; those of {} are kept", o.path.display()));
            lumen_trace::status!("    dropped {}{kept}", dropped.join(", "));
        }
    }
    Ok(())
}

fn import(input: &Path, output: &Path) -> Result<()> {
    check_outputs(&[Named::new("-o", output)], &[Named::new("INPUT", input)])?;
    let s = import_kineto(input, output)?;
    lumen_trace::status!(
        "[lumen] imported {} into {}: {} kernels, {} memcpys, {} memsets, {} syncs, {} API calls, {} spans, {} marks, {} iterations (ProfilerStep)",
        input.display(),
        output.display(),
        s.kernels,
        s.memcpys,
        s.memsets,
        s.syncs,
        s.api_calls,
        s.spans,
        s.marks,
        s.iterations
    );
    if s.steps_extended > 0 {
        lumen_trace::status!("  {} ProfilerStep ranges had no duration and were extended to the next step", s.steps_extended);
    }
    if s.kernels_without_correlation > 0 {
        lumen_trace::status!(
            "  {} kernels have no correlation id: their launch calls cannot be joined to them",
            s.kernels_without_correlation
        );
    }
    if s.correlation_collisions > 0 {
        lumen_trace::status!(
            "  {} API calls repeat a correlation id of their process: GPU work with such an id may be joined to the wrong call",
            s.correlation_collisions
        );
    }
    if let (Some(pid), false) = (s.host_pid, s.other_host_pids.is_empty()) {
        let others: Vec<String> = s.other_host_pids.iter().map(u32::to_string).collect();
        lumen_trace::status!("  GPU work is joined to the launches of process {pid}; processes {} also made API calls", others.join(", "));
    }
    if !s.ignored.is_empty() {
        lumen_trace::status!("  ignored {} events lumen keeps no rows for ({})", s.ignored_total(), describe_counts(&s.ignored));
    }
    match s.skipped_total() {
        0 => lumen_trace::status!("  skipped 0 events"),
        n => lumen_trace::status!("  skipped {n} events that could not be used: {}", describe_counts(&s.skipped)),
    }
    Ok(())
}
