//! lumen-serve: the OpenAI-compatible HTTP server on the engine handle (axum on tokio), as
//! `trtllm-serve` and `vllm serve` are. It owns the routes and their request checks
//! ([`openai`], [`fields`], [`error`]), the replies and their streaming ([`generate`], [`reply`],
//! [`stop`]), the Prometheus metrics ([`metrics`]), the profiling routes ([`profile`]) and the
//! server's life: bind, serve, and on SIGINT or SIGTERM stop accepting, let in-flight requests
//! finish within `--shutdown-timeout`, abort the rest and finish any open trace.

pub mod app;
pub mod error;
pub mod fields;
pub mod generate;
pub mod metrics;
pub mod openai;
pub mod profile;
pub mod reply;
pub mod stop;

use anyhow::{Context, Result};
use app::AppState;
use lumen_engine::{Engine, EngineHandle, FinishedTrace};
use lumen_model::Model;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    /// 0 lets the system pick; the log line names the port.
    pub port: u16,
    pub api_key: Option<String>,
    /// Most requests waiting to be scheduled; past it, 429. `None` is unbounded.
    pub max_queue: Option<usize>,
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// Where `/start_profile` writes traces when its body names no `output_dir`.
    pub profile_dir: PathBuf,
    /// The meta every trace of this server carries (command, host, model, backend).
    pub trace_meta: Vec<(String, String)>,
}

/// Serves `engine` under the model name `name` until SIGINT or SIGTERM; returns the trace the
/// engine finished on the way out (an environment window still open, say).
pub fn run(options: ServeOptions, model: Arc<Model>, name: String, engine: Engine) -> Result<FinishedTrace> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lumen-http")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(options, model, name, engine))
}

async fn serve(options: ServeOptions, model: Arc<Model>, name: String, engine: Engine) -> Result<FinishedTrace> {
    let address = format!("{}:{}", options.host, options.port);
    let listener = tokio::net::TcpListener::bind(&address).await.with_context(|| format!("--host/--port {address}: cannot listen"))?;
    let bound = listener.local_addr().context("the listening socket has no address")?;
    let metrics = metrics::install().context("cannot install the Prometheus recorder")?;
    let (stats_tx, stats_rx) = std::sync::mpsc::channel();
    let handle = EngineHandle::spawn(engine, Some(stats_tx));
    let iteration_model = name.clone();
    std::thread::Builder::new()
        .name("lumen-metrics".into())
        .spawn(move || stats_rx.iter().for_each(|stats| metrics::record_iteration(&iteration_model, &stats)))
        .context("cannot start the metrics thread")?;
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let shutdown_timeout = options.shutdown_timeout;
    let state = Arc::new(AppState { handle, model, name, options, metrics, started });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app::router(state.clone())).with_graceful_shutdown(async {
        let _ = stop_rx.await;
    });
    let mut server = tokio::spawn(std::future::IntoFuture::into_future(server));
    lumen_trace::status!("[lumen] serving {} on http://{bound}", state.name);
    let signal = shutdown_signal().await?;
    lumen_trace::status!(
        "[lumen] {signal}: no new connections; finishing in-flight requests for up to {:.0} s",
        shutdown_timeout.as_secs_f64()
    );
    let _ = stop_tx.send(());
    if tokio::time::timeout(shutdown_timeout, &mut server).await.is_err() {
        lumen_trace::status!("[lumen] aborting the requests still running");
        state.handle.abort_all();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut server).await;
    }
    close(state).await
}

/// Waits until every reply has let go of the state, then stops the engine and finishes its trace.
async fn close(mut state: Arc<AppState>) -> Result<FinishedTrace> {
    for _ in 0..500 {
        match Arc::try_unwrap(state) {
            Ok(app) => return app.handle.shutdown(),
            Err(shared) => state = shared,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    state.handle.abort_all();
    anyhow::bail!("replies still held the engine 5 s after shutdown; the trace may be unfinished")
}

/// The first SIGINT or SIGTERM, by name.
async fn shutdown_signal() -> Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    })
}
