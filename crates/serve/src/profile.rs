//! `/start_profile` and `/stop_profile`, with trtllm-serve's body (`output_dir`, `start_step`,
//! `num_steps`, all optional): the window opens `start_step` iterations after the next one, at an
//! iteration boundary, and closes after `num_steps` iterations or at `/stop_profile`, which
//! answers once the trace is written. A second start while a window is pending or open, and a
//! stop without one, get 409. On the GPU the window also starts and stops the CUDA profiler.

use crate::app::AppState;
use crate::error::ApiError;
use crate::fields::Fields;
use crate::generate::{parse_json, read_body};
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lumen_engine::{FinishedTrace, ProfileRefusal, Profiler};
use lumen_trace::window::ProfileWindows;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Numbers the traces a server writes, so each start gets a file of its own.
static NEXT_TRACE: AtomicU64 = AtomicU64::new(0);

fn refused(refusal: ProfileRefusal) -> ApiError {
    match refusal {
        ProfileRefusal::AlreadyProfiling => {
            ApiError::new(StatusCode::CONFLICT, "a profiling window is already pending or open; POST /stop_profile first")
        }
        ProfileRefusal::NotProfiling => ApiError::new(StatusCode::CONFLICT, "no profiling window is open; POST /start_profile first"),
        ProfileRefusal::Failed(why) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("profiling failed: {why}")),
    }
}

pub async fn start(State(app): State<Arc<AppState>>, body: Body) -> Response {
    start_window(app, body).await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn stop(State(app): State<Arc<AppState>>) -> Response {
    stop_window(app).await.unwrap_or_else(IntoResponse::into_response)
}

async fn start_window(app: Arc<AppState>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(&app, body).await?;
    let value = if bytes.iter().all(u8::is_ascii_whitespace) { json!({}) } else { parse_json(&bytes)? };
    let f = Fields::of(&value)?;
    let dir = f.str("output_dir")?.map_or_else(|| app.options.profile_dir.clone(), PathBuf::from);
    if !dir.is_dir() {
        return Err(ApiError::field("output_dir", format!("output_dir {} is not a directory", dir.display())));
    }
    let start_step = f.integer("start_step", 0, i64::MAX)?.unwrap_or(0) as u64;
    let num_steps = f.integer("num_steps", 1, i64::MAX)?.map(|n| n as u64);
    let path = dir.join(format!("lumen-serve-{}-{}.lumen", std::process::id(), NEXT_TRACE.fetch_add(1, Ordering::Relaxed)));
    let (meta, trace) = (app.options.trace_meta.clone(), path.clone());
    let make = Box::new(move |windows: &ProfileWindows| Profiler::new(&trace, Some(windows.clone()), meta));
    let answer = app.handle.start_profile(start_step, num_steps, make);
    let windows = wait(answer).await?.map_err(refused)?;
    let (first, last) = windows.ranges()[0];
    lumen_trace::status!("[lumen] profiling from iteration {first} into {}", path.display());
    let last = (last != u64::MAX).then_some(last);
    Ok(axum::Json(json!({"status": "started", "trace": path, "first_iteration": first, "last_iteration": last})).into_response())
}

async fn stop_window(app: Arc<AppState>) -> Result<Response, ApiError> {
    let finished: FinishedTrace = wait(app.handle.stop_profile()).await?.map_err(refused)?;
    let body: Value = match finished {
        Some((path, iterations)) => {
            lumen_trace::status!("[lumen] trace {}: {iterations} iterations recorded", path.display());
            json!({"status": "stopped", "trace": path, "iterations": iterations})
        }
        None => json!({"status": "stopped", "trace": null, "iterations": 0}),
    };
    Ok(axum::Json(body).into_response())
}

/// Waits for the engine thread's answer without holding up the async workers.
async fn wait<T: Send + 'static>(answer: std::sync::mpsc::Receiver<T>) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || answer.recv())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped"))
}
