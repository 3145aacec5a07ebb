//! `lumen trace`: look inside a trace (`info`) and convert it for other viewers (`export`).

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use lumen_trace::export::chrome::write_chrome_json;
use lumen_trace::export::perfetto::to_perfetto;
use lumen_trace::store::{read_trace, table_counts};
use std::io::{BufWriter, Write};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum TraceCommand {
    /// Print what a trace holds: time span, windows, iterations, rows per table.
    Info { trace: PathBuf },
    /// Convert a trace for Perfetto (protobuf) or chrome://tracing (JSON).
    Export {
        trace: PathBuf,
        #[arg(long, value_enum)]
        format: ExportFormat,
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
            let data = read_trace(&trace).map_err(anyhow::Error::msg)?;
            let file = std::fs::File::create(&output).with_context(|| format!("cannot create {}", output.display()))?;
            let mut out = BufWriter::new(file);
            match format {
                ExportFormat::Perfetto => out.write_all(&to_perfetto(&data)),
                ExportFormat::Chrome => write_chrome_json(&data, &mut out),
            }
            .and_then(|_| out.flush())
            .with_context(|| format!("cannot write {}", output.display()))?;
            eprintln!(
                "[lumen] wrote {} ({} spans, {} marks, {} counter samples)",
                output.display(),
                data.spans.len(),
                data.marks.len(),
                data.counters.len()
            );
            Ok(())
        }
    }
}

fn info(path: &PathBuf) -> Result<()> {
    let t = read_trace(path).map_err(anyhow::Error::msg)?;
    let counts = table_counts(path).map_err(anyhow::Error::msg)?;
    println!("trace      {}", path.display());
    for key in ["command", "host", "backend", "model", "windows", "complete"] {
        if let Some(v) = t.meta(key) {
            println!("{key:<10} {v}");
        }
    }
    let starts = t.spans.iter().map(|s| s.start_ns).chain(t.iterations.iter().map(|i| i.start_ns));
    let ends = t.spans.iter().map(|s| s.end_ns).chain(t.iterations.iter().map(|i| i.end_ns));
    if let (Some(a), Some(b)) = (starts.min(), ends.max()) {
        println!("span       {:.3} ms", (b - a) as f64 / 1e6);
    }
    if let (Some(first), Some(last)) = (t.iterations.first(), t.iterations.last()) {
        println!("iterations {} ({}..={})", t.iterations.len(), first.iter, last.iter);
    }
    println!("rows:");
    for (table, n) in counts {
        println!("  {table:<12} {n}");
    }
    Ok(())
}
