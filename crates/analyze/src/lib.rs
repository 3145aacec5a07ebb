//! lumen-analyze: what a trace measures (GPU utilisation and gaps, kernels, launches, iterations,
//! CPU phases, counters, memory, speed of light, headroom, steady-state steps), each a serialisable
//! struct or [`Measured::NotAvailable`] with the reason; [`diagnose`] names the known performance
//! patterns, and [`render_text`] and [`render_html`] report it all, with a base trace's comparison.

pub mod collectives;
pub mod compare;
pub mod diagnose;
pub mod gpu;
pub mod hardware;
pub mod headroom;
pub mod html;
pub mod iterations;
pub mod kernels;
pub mod launch;
pub mod measured;
pub mod memory;
pub mod moe;
pub mod overview;
pub mod ranges;
pub mod sol;
mod stats;
pub mod steps;
mod text;
#[cfg(test)]
mod threshold_edges;
pub mod view;

/// The shared row builders under the name the diagnosis tests import them by.
#[cfg(test)]
use lumen_test_support::rows as test_rows;

use anyhow::{ensure, Result};
use lumen_trace::model::TraceData;
use serde::Serialize;

pub use html::render_html;
pub use lumen_trace::correlate::LaunchIndex;
pub use measured::Measured;
pub use stats::Distribution;

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// How many equal slices of time the busy and counter series have.
    pub buckets: usize,
    /// How many kernels the top-kernel table lists.
    pub top: usize,
    /// Extra kernel class rules, one `class=pattern,pattern` a line, tried before the defaults.
    pub extra_rules: Option<String>,
    /// A regular expression naming the ranges that are steps, instead of iterations and
    /// `ProfilerStep#N`.
    pub step_pattern: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options { buckets: 100, top: 15, extra_rules: None, step_pattern: None }
    }
}

/// Everything measured in one trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    pub overview: overview::Overview,
    /// The steps, and which are steady state: the rest of the analysis judges those.
    pub steps: Measured<steps::Steps>,
    pub gpu: Measured<Vec<gpu::DeviceUtilisation>>,
    pub gaps: Measured<Vec<gpu::DeviceGaps>>,
    pub kernels: Measured<kernels::Kernels>,
    pub launch: Measured<launch::Launch>,
    pub iterations: Measured<iterations::Iterations>,
    pub phases: iterations::Phases,
    pub ranges: Measured<Vec<ranges::ProjectedRange>>,
    pub hardware: Measured<hardware::Hardware>,
    pub memory: memory::Memory,
    pub speed_of_light: sol::SpeedOfLight,
    pub headroom: Measured<headroom::Headroom>,
    /// Mixture-of-experts models: how evenly the router spread the tokens over the experts.
    pub moe: Measured<moe::MoeLoad>,
    /// Collective communication between ranks: time, exposed time, stragglers.
    pub collectives: Measured<collectives::Collectives>,
    /// The known performance patterns these figures show.
    pub diagnosis: diagnose::Diagnosis,
}

pub fn analyze(trace: &TraceData, options: &Options) -> Result<Analysis> {
    ensure!(options.buckets > 0, "the number of buckets must be at least 1");
    let rules = match &options.extra_rules {
        Some(extra) => kernels::with_extra_rules(kernels::default_rules(), extra)?,
        None => kernels::default_rules(),
    };
    let (trace, early_starts) = gpu::serialize_streams(trace);
    let trace = trace.as_ref();
    let pattern = options.step_pattern.as_deref().map(steps::step_pattern).transpose()?;
    let (steps, windows) = steps::analyze(trace, pattern.as_ref());
    let launches = LaunchIndex::new(trace);
    let (gpu, gaps) = gpu::analyze(trace, &launches, &windows, options.buckets, gpu::TOP_GAPS);
    let speed_of_light = sol::analyze(trace, &rules, &launches, &windows);
    let headroom = headroom::analyze(trace, &windows, speed_of_light.peaks.get());
    let kernels = kernels::analyze(trace, &launches, &rules, options.top, early_starts);
    let moe = moe::analyze(trace, &kernels);
    let collectives = collectives::analyze(trace, &rules);
    let mut analysis = Analysis {
        overview: overview::analyze(trace),
        steps,
        gpu,
        gaps,
        kernels,
        launch: launch::analyze(trace, &launches),
        iterations: iterations::analyze(trace),
        phases: iterations::phases(trace),
        ranges: ranges::analyze(trace, &launches, ranges::TOP_RANGES),
        hardware: hardware::analyze(trace, options.buckets),
        memory: memory::analyze(trace, &launches),
        speed_of_light,
        headroom,
        moe,
        collectives,
        diagnosis: diagnose::Diagnosis::default(),
    };
    analysis.diagnosis = diagnose::diagnose(trace, &analysis, &windows, &launches);
    Ok(analysis)
}

/// The whole analysis as a terminal report.
pub fn render_text(a: &Analysis) -> String {
    let mut out = String::new();
    for why in [&a.overview.incomplete, &a.overview.rows_skipped].into_iter().flatten() {
        out.push_str(&format!("WARNING: {why}.\n\n"));
    }
    diagnose::render(&a.diagnosis, &mut out);
    view::render_section("Overview", &overview::view(&a.overview), &mut out);
    view::render_section("Headroom", &headroom::view(&a.headroom), &mut out);
    view::render_section("Speed of light", &sol::view(&a.speed_of_light), &mut out);
    view::render_section("Steps and steady state", &steps::view(&a.steps), &mut out);
    view::render_section("GPU utilisation", &gpu::view_utilisation(&a.gpu), &mut out);
    view::render_section("GPU idle gaps", &gpu::view_gaps(&a.gaps), &mut out);
    view::render_section("Kernels", &kernels::view(&a.kernels), &mut out);
    view::render_section("Launch overhead", &launch::view(&a.launch), &mut out);
    view::render_section("Iterations", &iterations::view(&a.iterations), &mut out);
    view::render_section("CPU phases", &iterations::view_phases(&a.phases), &mut out);
    view::render_section("CPU ranges on the GPU", &ranges::view(&a.ranges), &mut out);
    view::render_section("Hardware counters", &hardware::view(&a.hardware), &mut out);
    view::render_section("Memory", &memory::view(&a.memory), &mut out);
    view::render_section("MoE expert load", &moe::view(&a.moe), &mut out);
    view::render_section("Collectives", &collectives::view(&a.collectives), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measured::NO_GPU_OPS;

    #[test]
    fn an_empty_trace_is_not_available_everywhere_and_still_renders() {
        let a = analyze(&TraceData::default(), &Options::default()).unwrap();
        assert_eq!(a.gpu, Measured::NotAvailable(NO_GPU_OPS.into()));
        assert!(a.kernels.get().is_none() && a.launch.get().is_none() && a.iterations.get().is_none());
        assert!(a.ranges.get().is_none() && a.hardware.get().is_none());
        let text = render_text(&a);
        assert!(text.contains("== GPU utilisation ==") && text.contains("not available: the trace has no GPU operations"), "{text}");
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["gpu"]["not_available"], NO_GPU_OPS);
    }

    #[test]
    fn bad_options_are_errors() {
        let zero = Options { buckets: 0, ..Options::default() };
        assert!(analyze(&TraceData::default(), &zero).is_err());
        let bad_rule = Options { extra_rules: Some("gemm".into()), ..Options::default() };
        assert!(analyze(&TraceData::default(), &bad_rule).unwrap_err().to_string().contains("line 1"));
    }
}
