//! Profiling switches shared by the engine-running commands: `--profile-iters` and `--trace`, and
//! their environment counterparts (`LUMEN_*`, with TensorRT-LLM's `TLLM_*` names accepted). The
//! environment wins over the flags, and the log says so.

use anyhow::{Context, Result};
use clap::Args;
use lumen_engine::Profiler;
use lumen_trace::instrument;
use lumen_trace::output::{check_outputs, Named};
use lumen_trace::window::ProfileWindows;
use std::path::PathBuf;

#[derive(Args, Clone, Default)]
pub struct ProfileArgs {
    /// Engine iterations to record, e.g. 20-40 or 10-20,50-60 (LUMEN_PROFILE_START_STOP wins).
    #[arg(long)]
    pub profile_iters: Option<String>,
    /// Write the recorded iterations to this trace: .lumen (SQLite) or .json (Chrome). LUMEN_TRACE wins.
    #[arg(long)]
    pub trace: Option<PathBuf>,
}

/// The first of `names` set in the environment, with its name and value.
fn env_first(names: &[&'static str]) -> Option<(&'static str, String)> {
    names.iter().find_map(|n| std::env::var(n).ok().map(|v| (*n, v)))
}

fn env_flag(names: &[&'static str]) -> bool {
    env_first(names).is_some_and(|(_, v)| !matches!(v.trim(), "" | "0" | "false" | "off"))
}

impl ProfileArgs {
    /// The trace to write, if any, with what named it: `LUMEN_TRACE` (or `TLLM_TORCH_PROFILE_TRACE`),
    /// which wins, or `--trace`.
    pub fn trace_output(&self) -> Option<(&'static str, PathBuf)> {
        match (env_first(&["LUMEN_TRACE", "TLLM_TORCH_PROFILE_TRACE"]), &self.trace) {
            (Some((var, path)), _) => Some((var, PathBuf::from(path))),
            (None, flag) => flag.clone().map(|p| ("--trace", p)),
        }
    }

    /// Reads the switches, sets the recorded categories, and returns the profiler to give the
    /// engine, if a trace is to be written or windows are set. The trace path must pass the
    /// output checks against `inputs` (the files the command reads).
    pub fn profiler(&self, model: &str, inputs: &[Named]) -> Result<Option<Profiler>> {
        instrument::configure(
            env_flag(&["LUMEN_NVTX_DEBUG", "TLLM_NVTX_DEBUG"]),
            env_flag(&["LUMEN_API_NVTX", "TLLM_LLMAPI_ENABLE_NVTX"]),
            env_flag(&["LUMEN_PROFILE_RECORD_ALLOC", "TLLM_PROFILE_RECORD_GC"]),
            env_flag(&["LUMEN_PROFILE_RECORD_WAITS"]),
        );
        if instrument::nvtx_from_env() {
            lumen_trace::status!("[lumen] NVTX ranges on (domain lumen)");
        }
        let env_windows = ProfileWindows::from_env()?;
        let windows = match (env_windows, &self.profile_iters) {
            (Some((w, var)), Some(flag)) => {
                lumen_trace::status!("[lumen] {var}={w} overrides --profile-iters {flag}");
                Some(w)
            }
            (Some((w, _)), None) => Some(w),
            (None, Some(flag)) => Some(ProfileWindows::parse(flag, "--profile-iters")?),
            (None, None) => None,
        };
        let trace = self.trace_output();
        if let (Some((var, path)), Some(flag)) = (&trace, &self.trace) {
            if *var != "--trace" {
                lumen_trace::status!("[lumen] {var}={} overrides --trace {}", path.display(), flag.display());
            }
        }
        let Some((named_by, path)) = trace else {
            return Ok(windows.map(|w| {
                lumen_trace::status!(
                    "[lumen] profiling windows {w}: the CUDA profiler starts and stops at their edges (for `lumen profile -c cudaProfilerApi`); set LUMEN_TRACE or --trace to record them here too"
                );
                Profiler::windows_only(w)
            }));
        };
        check_outputs(&[Named::new(named_by, &path)], inputs)?;
        let meta = trace_meta(model);
        let what = windows.as_ref().map_or("every iteration".to_string(), |w| format!("iterations {w}"));
        let profiler = Profiler::new(&path, windows, meta).context("cannot start the trace")?;
        lumen_trace::status!("[lumen] recording {what} into {}", path.display());
        Ok(Some(profiler))
    }
}

/// The meta every trace of this command carries: the command line, the host, the model and
/// lumen's version.
pub fn trace_meta(model: &str) -> Vec<(String, String)> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    vec![
        ("command".to_string(), std::env::args().collect::<Vec<_>>().join(" ")),
        ("host".to_string(), host),
        ("model".to_string(), model.to_string()),
        ("lumen_version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
    ]
}

/// Where the model runs, as trace meta: `backend` (cpu or cuda) and, on a GPU, `gpu` (its name
/// and ordinal).
pub fn device_meta(model: &lumen_model::Model) -> Vec<(String, String)> {
    match model.cuda_weights() {
        Some(w) => {
            vec![("backend".to_string(), "cuda".to_string()), ("gpu".to_string(), format!("{} (cuda:{})", w.gpu.info.name, w.gpu.ordinal))]
        }
        None => vec![("backend".to_string(), "cpu".to_string())],
    }
}

/// Writes [`device_meta`] into the profiler's trace.
pub fn record_device(profiler: &mut Option<Profiler>, model: &lumen_model::Model) -> Result<()> {
    let Some(p) = profiler else { return Ok(()) };
    device_meta(model).iter().try_for_each(|(key, value)| p.set_meta(key, value))
}
