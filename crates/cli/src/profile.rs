//! `lumen profile`: runs a command with lumen's CUPTI collector injected into its CUDA processes
//! (`CUDA_INJECTION64_PATH`, and `NVTX_INJECTION64_PATH` pointing at libcupti for NVTX), then
//! merges the trace each process wrote into one `.lumen` file. Options follow `nsys profile`.
//! The command always runs: when there is nothing to collect with (no CUDA driver, an unusable
//! `LUMEN_COLLECTOR_LIB`) lumen says why and runs it untraced. lumen exits with the command's status.

use anyhow::{bail, Context, Result};
use clap::Args;
use lumen_collect::gpu_metrics::Sampler;
use lumen_collect::options::{Capture, CollectorOptions, GraphTrace, RangeEnd};
use lumen_trace::merge::merge_traces;
use lumen_trace::store::{read_meta, Batch, TraceWriter};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct ProfileArgs {
    /// Output trace; `.lumen` is added when missing.
    #[arg(short = 'o', long = "output", default_value = "report")]
    output: String,
    /// `none` collects the whole run; `cudaProfilerApi` only between cuProfilerStart and
    /// cuProfilerStop (lumen's own iteration windows call them).
    #[arg(short = 'c', long = "capture-range", default_value = "none", value_parser = ["none", "cudaProfilerApi"])]
    capture_range: String,
    /// After a cuProfilerStop: `stop` ends collection, `repeat` waits for the next start.
    #[arg(long = "capture-range-end", default_value = "stop", value_parser = ["stop", "repeat"])]
    capture_range_end: String,
    /// `graph`: one record per CUDA graph launch; `node`: every kernel node, with its graph ids.
    #[arg(long = "cuda-graph-trace", default_value = "graph", value_parser = ["graph", "node"])]
    cuda_graph_trace: String,
    /// What to trace, comma-separated: cuda (kernels, copies, sets, synchronisation), nvtx, api
    /// (runtime and driver calls).
    #[arg(short = 't', long = "trace", default_value = "cuda,nvtx,api", value_delimiter = ',', value_parser = ["cuda", "nvtx", "api"])]
    trace: Vec<String>,
    /// Sample GPU metrics every INTERVAL microseconds (default 10000): SM activity, DRAM read and
    /// write throughput and tensor-pipe activity from CUPTI PM sampling; where it cannot run,
    /// NVML (GPM on Hopper and later, plain utilisation elsewhere).
    #[arg(long = "gpu-metrics", value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "10000", value_parser = clap::value_parser!(u64).range(100..))]
    gpu_metrics: Option<u64>,
    /// Environment for the command, `K=V`, comma-separated or repeated.
    #[arg(short = 'e', long = "env-var", value_delimiter = ',')]
    env: Vec<String>,
    /// The command and its arguments (after `--`).
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// The collector library, built by build.rs and carried inside the `lumen` executable.
const COLLECTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/liblumen_collect.so"));

/// The collector library to inject: `$LUMEN_COLLECTOR_LIB` when set, else the embedded one,
/// written into `dir` (which outlives the command).
fn collector_library(dir: &Path) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("LUMEN_COLLECTOR_LIB") {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("LUMEN_COLLECTOR_LIB={} is not a file", p.display())) };
    }
    let path = dir.join(lumen_collect::LIBRARY_FILE);
    std::fs::write(&path, COLLECTOR).map_err(|e| format!("cannot write the collector library to {}: {e}", path.display()))?;
    Ok(path)
}

/// libcupti, for `NVTX_INJECTION64_PATH`: the first `libcupti.so*` in `$LD_LIBRARY_PATH` or the
/// usual CUDA locations.
fn find_cupti() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var("LD_LIBRARY_PATH").unwrap_or_default().split(':').filter(|d| !d.is_empty()).map(PathBuf::from).collect();
    dirs.extend(
        ["/usr/local/cuda/targets/x86_64-linux/lib", "/usr/local/cuda/lib64", "/usr/local/cuda/extras/CUPTI/lib64"].map(PathBuf::from),
    );
    dirs.iter().find_map(|d| {
        let mut found: Vec<PathBuf> = std::fs::read_dir(d)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libcupti.so")))
            .collect();
        found.sort();
        found.into_iter().next()
    })
}

fn parse_env(pairs: &[String]) -> Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("-e {p:?}: expected NAME=VALUE"),
        })
        .collect()
}

/// The trace `-o` names: the path as given when it ends in `.lumen`, else with `.lumen` added
/// (a name's own dots, as in `llama-3.1-8b-gpu`, are kept).
fn trace_path(output: &str) -> PathBuf {
    if output.ends_with(".lumen") {
        PathBuf::from(output)
    } else {
        PathBuf::from(format!("{output}.lumen"))
    }
}

/// Runs the command and writes the merged trace; returns the command's exit status.
pub fn run(args: ProfileArgs) -> Result<i32> {
    let env = parse_env(&args.env)?;
    let output = trace_path(&args.output);
    if output.exists() {
        bail!("{} exists; remove it or choose another -o", output.display());
    }
    let parts = std::env::temp_dir().join(format!("lumen-profile-{}", std::process::id()));
    std::fs::create_dir_all(&parts).with_context(|| format!("cannot create {}", parts.display()))?;
    let options = CollectorOptions {
        dir: parts.clone(),
        capture: if args.capture_range == "cudaProfilerApi" { Capture::ProfilerApi } else { Capture::Everything },
        range_end: if args.capture_range_end == "repeat" { RangeEnd::Repeat } else { RangeEnd::Stop },
        graph_trace: if args.cuda_graph_trace == "node" { GraphTrace::Node } else { GraphTrace::Graph },
        cuda: args.trace.iter().any(|t| t == "cuda"),
        nvtx: args.trace.iter().any(|t| t == "nvtx"),
        api: args.trace.iter().any(|t| t == "api"),
    };

    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]).envs(env);
    let library = if lumen_backend::cuda::driver_present() {
        collector_library(&parts)
    } else {
        Err("no CUDA driver (libcuda.so) on this machine".to_string())
    };
    let collecting = match library {
        Err(why) => Some(why),
        Ok(lib) => {
            cmd.env("CUDA_INJECTION64_PATH", &lib).envs(options.to_env());
            if options.nvtx && std::env::var_os("NVTX_INJECTION64_PATH").is_none() {
                match find_cupti() {
                    Some(cupti) => {
                        cmd.env("NVTX_INJECTION64_PATH", cupti);
                    }
                    None => {
                        lumen_trace::status!("[lumen] profile: libcupti.so not found in LD_LIBRARY_PATH; NVTX ranges are not collected")
                    }
                }
            }
            None
        }
    };
    if let Some(why) = &collecting {
        lumen_trace::status!("[lumen] profile: cannot collect: {why}; running the command untraced");
    }
    let sampler = args.gpu_metrics.map(|us| Sampler::start(Duration::from_micros(us)));
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot run {:?}", args.command[0]))?;
    forward_signals_to(child.id());
    let status = child.wait().with_context(|| format!("cannot wait for {:?}", args.command[0]))?;
    let elapsed = started.elapsed();
    let metrics_source = match sampler {
        None => "off".to_string(),
        Some(Err(why)) => {
            lumen_trace::status!("[lumen] profile: GPU metrics unavailable: {why:#}");
            format!("none ({why:#})")
        }
        Some(Ok(sampler)) => {
            let (mut rows, source) = sampler.finish();
            if let Some(windows) = capture_windows(&part_metas(&parts)) {
                let sampled = rows.len();
                rows.retain(|r| windows.iter().any(|&(open, close)| open <= r.ts_ns && r.ts_ns <= close));
                lumen_trace::status!(
                    "[lumen] profile: kept {} of {sampled} GPU metric samples, those inside the capture windows",
                    rows.len()
                );
            }
            let path = parts.join("gpu-metrics.lumen");
            TraceWriter::create(&path, &[("gpu_metrics_source".into(), source.clone())])
                .and_then(|mut w| w.append(&Batch { counters: &rows, ..Batch::default() }).and_then(|_| w.finish()))?;
            source
        }
    };
    let code = status.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0));

    let meta = vec![
        ("command".to_string(), args.command.join(" ")),
        ("collector".into(), if collecting.is_some() { "none".into() } else { "cupti".into() }),
        ("collector_status".into(), collecting.clone().unwrap_or_else(|| "ok".into())),
        ("exit_status".into(), code.to_string()),
        ("wall_s".into(), format!("{:.3}", elapsed.as_secs_f64())),
        ("gpu_metrics_source".into(), metrics_source),
    ];
    let gpu = gpus(&part_metas(&parts)).map(|gpu| ("gpu".to_string(), gpu));
    let windows = capture_windows(&part_metas(&parts)).map(|w| ("capture_window_times".to_string(), window_times_text(&w)));
    let meta: Vec<(String, String)> = meta.into_iter().chain(gpu).chain(windows).collect();
    write_trace(&parts, &output, &meta)?;
    let _ = std::fs::remove_dir_all(&parts);
    Ok(code)
}

/// The meta of each process trace the collectors wrote into `parts`.
fn part_metas(parts: &Path) -> Vec<Vec<(String, String)>> {
    let Ok(entries) = std::fs::read_dir(parts) else { return Vec::new() };
    let traces = entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "lumen"));
    traces.filter_map(|path| read_meta(&path).ok()).collect()
}

fn meta_values<'a>(metas: &'a [Vec<(String, String)>], key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    metas.iter().filter_map(move |meta| meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()))
}

/// The capture windows the processes' collectors saw open (`-c cudaProfilerApi`), from their
/// traces' `capture_window_times` meta; None when no process recorded any.
fn capture_windows(metas: &[Vec<(String, String)>]) -> Option<Vec<(u64, u64)>> {
    let mut recorded = meta_values(metas, "capture_window_times").peekable();
    recorded.peek()?;
    Some(recorded.flat_map(parse_window_times).collect())
}

/// The GPUs the processes ran on, each named once, as the collectors named them.
fn gpus(metas: &[Vec<(String, String)>]) -> Option<String> {
    let mut names: Vec<&str> = meta_values(metas, "gpu").flat_map(|v| v.split(", ")).collect();
    names.sort_unstable();
    names.dedup();
    (!names.is_empty()).then(|| names.join(", "))
}

/// Capture windows as `open-close,open-close` in ns, as the collectors write them.
fn window_times_text(windows: &[(u64, u64)]) -> String {
    windows.iter().map(|(open, close)| format!("{open}-{close}")).collect::<Vec<_>>().join(",")
}

/// `open-close,open-close` in ns; malformed pairs are skipped.
fn parse_window_times(text: &str) -> Vec<(u64, u64)> {
    text.split(',')
        .filter_map(|pair| {
            let (open, close) = pair.split_once('-')?;
            Some((open.trim().parse().ok()?, close.trim().parse().ok()?))
        })
        .collect()
}

/// Merges the per-process traces in `parts` into `output` (a trace with only `meta` when no
/// process wrote one).
fn write_trace(parts: &Path, output: &Path, meta: &[(String, String)]) -> Result<()> {
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(parts)
        .with_context(|| format!("cannot read {}", parts.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "lumen"))
        .collect();
    inputs.sort();
    if inputs.is_empty() {
        TraceWriter::create(output, meta).and_then(|w| w.finish())?;
        lumen_trace::status!("[lumen] profile: no process was traced; wrote {}", output.display());
        return Ok(());
    }
    let started = Instant::now();
    let summary = merge_traces(&inputs, output, meta)?;
    let total = |table: &str| summary.inputs.iter().map(|i| i.rows_of(table)).sum::<u64>();
    let incomplete = summary.inputs.iter().filter(|i| !i.complete).count();
    lumen_trace::status!(
        "[lumen] profile: merged {} process trace(s) in {:.2} s: {} GPU operations, {} API calls, {} NVTX ranges{}",
        inputs.len(),
        started.elapsed().as_secs_f64(),
        total("gpu_ops"),
        total("api_calls"),
        total("spans"),
        if incomplete > 0 { format!("; {incomplete} incomplete (the process ended before its collector finished)") } else { String::new() }
    );
    lumen_trace::status!("[lumen] profile: wrote {}", output.display());
    Ok(())
}

/// The process SIGINT, SIGTERM and SIGHUP are passed on to while `lumen profile` waits for it.
static PROFILED: AtomicI32 = AtomicI32::new(0);

extern "C" fn pass_on(signal: libc::c_int) {
    let pid = PROFILED.load(Ordering::SeqCst);
    if pid > 0 {
        // kill is async-signal-safe; the command decides how to end, and lumen merges what it left.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Passes SIGINT, SIGTERM and SIGHUP on to the profiled command, so that it (and the collector
/// inside it) can flush and end, and `lumen profile` goes on to merge its trace.
fn forward_signals_to(pid: u32) {
    PROFILED.store(pid as i32, Ordering::SeqCst);
    for signal in lumen_engine::interrupt::STOP_SIGNALS {
        unsafe { libc::signal(signal, pass_on as *const () as libc::sighandler_t) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_gpus_come_from_the_process_traces_meta() {
        let meta = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let metas = [
            meta(&[("pid", "1"), ("capture_window_times", "10-20"), ("gpu", "H100 (cuda:0)")]),
            meta(&[("pid", "2"), ("capture_window_times", "30-40"), ("gpu", "H100 (cuda:1), H100 (cuda:0)")]),
            meta(&[("gpu_metrics_source", "cupti-pm-sampling")]),
        ];
        assert_eq!(capture_windows(&metas), Some(vec![(10, 20), (30, 40)]));
        // The merged trace's meta states them in the collectors' own format.
        assert_eq!(window_times_text(&[(10, 20), (30, 40)]), "10-20,30-40");
        assert_eq!(parse_window_times(&window_times_text(&[(10, 20), (30, 40)])), vec![(10, 20), (30, 40)]);
        assert_eq!(gpus(&metas).as_deref(), Some("H100 (cuda:0), H100 (cuda:1)"));
        assert_eq!((capture_windows(&metas[2..]), gpus(&metas[2..])), (None, None));
    }

    #[test]
    fn the_trace_keeps_the_dots_of_its_name_and_gets_lumen_added_once() {
        assert_eq!(trace_path("out/llama-3.1-8b-gpu"), PathBuf::from("out/llama-3.1-8b-gpu.lumen"));
        assert_eq!(trace_path("report"), PathBuf::from("report.lumen"));
        assert_eq!(trace_path("run.lumen"), PathBuf::from("run.lumen"));
        assert_eq!(trace_path("run.v2"), PathBuf::from("run.v2.lumen"));
    }

    #[test]
    fn window_times_parse_and_malformed_pairs_are_skipped() {
        assert_eq!(parse_window_times("10-20,30-45"), [(10, 20), (30, 45)]);
        assert_eq!(parse_window_times("10-20,x-5,7,40-50"), [(10, 20), (40, 50)]);
        assert!(parse_window_times("").is_empty());
    }
}
