//! `lumen analyze TRACE`: reads a `.lumen` trace (recorder or collector) and prints what the
//! GPU, the kernels, the launches, the iterations, the sampled hardware metrics and memory traffic
//! measure (crates/analyze), each section saying "not available" when the trace lacks its data,
//! after a diagnosis of the known performance patterns those figures show; `--html` writes the
//! same report as one self-contained HTML page with charts.

use anyhow::{bail, Context, Result};
use clap::Args;
use lumen_analyze::{analyze, diagnose, render_html, render_text, Options};
use lumen_trace::store::read_trace;
use std::path::PathBuf;

#[derive(Args)]
pub struct AnalyzeArgs {
    /// The trace to analyse (`.lumen`).
    trace: PathBuf,
    /// Kernels listed by total time.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    top: u64,
    /// Time buckets in the busy and metric series.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    buckets: u64,
    /// Extra kernel-class rules, one `CLASS=PATTERN[,PATTERN...]` per line (`^` marks a
    /// prefix); they are tried before the built-in ones.
    #[arg(long, value_name = "FILE")]
    kernel_classes: Option<PathBuf>,
    /// Also write the analysis, diagnosis included, as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also write the report as one self-contained HTML page with charts to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// After the report, print the diagnosis thresholds and when each pattern fires.
    #[arg(long)]
    explain: bool,
}

pub fn run(args: AnalyzeArgs) -> Result<()> {
    let extra_rules = match &args.kernel_classes {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("cannot read kernel-class rules {}", p.display()))?),
        None => None,
    };
    if !args.trace.is_file() {
        bail!("trace {} does not exist (expected a .lumen file written by lumen)", args.trace.display());
    }
    let trace = read_trace(&args.trace).map_err(anyhow::Error::msg)?;
    let options = Options { buckets: args.buckets as usize, top: args.top as usize, extra_rules };
    let analysis = analyze(&trace, &options).map_err(anyhow::Error::msg)?;
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&analysis).context("serializing the analysis")?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, render_html(&analysis)).with_context(|| format!("cannot write the HTML report {}", path.display()))?;
    }
    print!("{}", render_text(&analysis));
    if args.explain {
        print!("\n{}", diagnose::render_explain());
    }
    Ok(())
}
