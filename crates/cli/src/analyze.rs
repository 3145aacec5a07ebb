//! `lumen analyze TRACE`: reads a `.lumen` trace (recorder or collector) and prints what the
//! GPU, the kernels, the launches, the iterations, the sampled hardware metrics and memory traffic
//! measure (crates/analyze), each section saying "not available" when the trace lacks its data,
//! after a diagnosis of the known performance patterns those figures show; `--html` writes the
//! same report as one self-contained HTML page with charts. With `--compare BASE` the report is
//! followed by what changed from BASE to TRACE (crates/analyze/src/compare.rs), the JSON gains a
//! `comparison` key, and the HTML page a comparison section after the diagnosis.

use anyhow::{bail, Context, Result};
use clap::Args;
use lumen_analyze::compare::{self, Comparison};
use lumen_analyze::{analyze, diagnose, render_html, render_text, Analysis, Options};
use lumen_trace::output::{check_outputs, print_report, write_atomically, Named};
use lumen_trace::store::read_trace;
use serde::Serialize;
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
    /// Compare against BASE, an earlier trace: deltas of the headline figures, kernels that
    /// appeared, disappeared or changed, the phase-time shift and a verdict. BASE is analysed
    /// with the same options; the comparison follows the report, goes under `comparison` in the
    /// JSON, and follows the diagnosis in the HTML page.
    #[arg(long, value_name = "BASE")]
    compare: Option<PathBuf>,
    /// A regular expression naming the CPU ranges (NVTX, record_function, recorder spans) that
    /// are steps; by default lumen's iterations and `ProfilerStep#N` ranges are. Steps far
    /// longer than the median with the GPU idle are one-off outliers, left out of the diagnosis.
    #[arg(long, value_name = "REGEX")]
    step_range: Option<String>,
}

/// The JSON of `--compare`: the analysis of TRACE with the comparison beside its sections.
#[derive(Serialize)]
struct Compared<'a> {
    #[serde(flatten)]
    analysis: &'a Analysis,
    comparison: &'a Comparison,
}

pub fn run(args: AnalyzeArgs) -> Result<()> {
    let extra_rules = match &args.kernel_classes {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("cannot read kernel-class rules {}", p.display()))?),
        None => None,
    };
    let outputs: Vec<Named> = [("--json", &args.json), ("--html", &args.html)]
        .into_iter()
        .filter_map(|(what, p)| p.as_deref().map(|p| Named::new(what, p)))
        .collect();
    let inputs: Vec<Named> =
        [("TRACE", Some(&args.trace)), ("--compare", args.compare.as_ref()), ("--kernel-classes", args.kernel_classes.as_ref())]
            .into_iter()
            .filter_map(|(what, p)| p.map(|p| Named::new(what, p)))
            .collect();
    check_outputs(&outputs, &inputs)?;
    if args.trace.is_dir() {
        bail!("trace {} is a directory (expected a .lumen file written by lumen)", args.trace.display());
    }
    if !args.trace.is_file() {
        bail!("trace {} does not exist (expected a .lumen file written by lumen)", args.trace.display());
    }
    let trace = read_trace(&args.trace)?;
    let base = match &args.compare {
        Some(path) if !path.is_file() => {
            bail!("base trace {} (--compare) does not exist (expected a .lumen file written by lumen)", path.display())
        }
        Some(path) => Some(read_trace(path).context("base trace (--compare)")?),
        None => None,
    };
    let options = Options { buckets: args.buckets as usize, top: args.top as usize, extra_rules, step_pattern: args.step_range.clone() };
    let analysis = analyze(&trace, &options)?;
    let comparison = match &base {
        Some(base) => Some(compare::compare(&analyze(base, &options)?, &analysis, base, &trace)),
        None => None,
    };
    if let Some(path) = &args.json {
        let json = match &comparison {
            Some(comparison) => serde_json::to_string_pretty(&Compared { analysis: &analysis, comparison }),
            None => serde_json::to_string_pretty(&analysis),
        };
        write_atomically(path, json.context("serializing the analysis")?.as_bytes())?;
    }
    if let Some(path) = &args.html {
        write_atomically(path, render_html(&analysis, comparison.as_ref()).as_bytes())
            .with_context(|| format!("cannot write the HTML report {}", path.display()))?;
    }
    let mut report = render_text(&analysis);
    if let Some(comparison) = &comparison {
        compare::render(comparison, &mut report);
    }
    if args.explain {
        report.push('\n');
        report.push_str(&diagnose::render_explain());
    }
    print_report(&report)?;
    Ok(())
}
