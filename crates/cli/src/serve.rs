//! `lumen serve`: the OpenAI-compatible server (lumen-serve) on the model and engine that the
//! shared flags describe, with the profiling switches of `bench`, counted from server start.

use crate::common::{EngineArgs, ModelArgs};
use crate::recording::{device_meta, record_device, trace_meta, ProfileArgs};
use anyhow::{ensure, Result};
use clap::Args;
use lumen_serve::ServeOptions;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    profile: ProfileArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 lets the system pick one (the log line names it).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The model name clients give (default: the model's own name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long)]
    api_key: Option<String>,
    /// Most requests waiting to be scheduled; past it the server answers 429 at once (default:
    /// unbounded).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_queue: Option<u32>,
    /// Largest request body, in bytes; a larger one gets 413.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    max_body_bytes: u64,
    /// Seconds a request body may take to arrive; a slower one gets 408.
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    body_timeout: f64,
    /// Seconds in-flight requests get to finish after SIGINT or SIGTERM before they are aborted.
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    shutdown_timeout: f64,
    /// Where /start_profile writes its traces when the request names no output_dir.
    #[arg(long, default_value = ".")]
    profile_dir: PathBuf,
}

fn seconds(flag: &str, value: f64) -> Result<Duration> {
    ensure!(value.is_finite() && value > 0.0 && value < 1e7, "{flag} {value}: expected a positive number of seconds");
    Ok(Duration::from_secs_f64(value))
}

pub fn run(args: ServeArgs) -> Result<()> {
    let body_timeout = seconds("--body-timeout", args.body_timeout)?;
    let shutdown_timeout = seconds("--shutdown-timeout", args.shutdown_timeout)?;
    ensure!(args.profile_dir.is_dir(), "--profile-dir {}: not a directory", args.profile_dir.display());
    let spec = args.model.spec();
    let mut profiler = args.profile.profiler(&spec, &[])?;
    let model = args.model.load(&args.engine)?;
    record_device(&mut profiler, &model)?;
    let mut engine = args.engine.engine(model.clone(), model.cuda_weights().is_some())?;
    if let Some(p) = profiler {
        engine.enable_profiling(p);
    }
    let mut meta = trace_meta(&spec);
    meta.extend(device_meta(&model));
    let options = ServeOptions {
        host: args.host,
        port: args.port,
        api_key: args.api_key,
        max_queue: args.max_queue.map(|n| n as usize),
        max_body_bytes: args.max_body_bytes as usize,
        body_timeout,
        shutdown_timeout,
        profile_dir: args.profile_dir,
        trace_meta: meta,
    };
    let name = args.served_model_name.unwrap_or_else(|| model.name.clone());
    if let Some((path, iterations)) = lumen_serve::run(options, model, name, engine)? {
        lumen_trace::status!("[lumen] trace {}: {iterations} iterations recorded", path.display());
    }
    lumen_trace::status!("[lumen] server stopped");
    Ok(())
}
