//! A benchmark stopped by SIGTERM, SIGINT or SIGHUP stops at an iteration boundary, writes and
//! finalises its trace, and exits with 128 + the signal: a Chrome-JSON trace is whole, and a
//! `.lumen` trace stands alone (copied without its `-wal`, it opens with every iteration that ran).

mod common;

use common::{fixed_length_dataset, lumen_bin, Scratch};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The iteration log the benchmark streams.
const LOG: &str = "iterations.jsonl";

/// Iterations logged so far.
fn logged(s: &Scratch) -> usize {
    std::fs::read_to_string(s.path(LOG)).map_or(0, |log| log.lines().count())
}

/// Starts a benchmark long enough to be interrupted, recording every iteration into `trace`.
fn start_bench(s: &Scratch, trace: &str) -> Child {
    let data = fixed_length_dataset(s, "smollm2-135m", "400", "32", "64");
    Command::new(lumen_bin())
        .args(["bench", "throughput", "--model", "smollm2-135m", "--dataset", &data, "--eos-id", "-1", "--max-batch-size", "8"])
        .args(["--warmup", "0", "--iteration-log", &s.path(LOG)])
        .env_remove("LUMEN_MODEL")
        .env("LUMEN_TRACE", trace)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lumen starts")
}

/// Waits until `ready` says the command is under way (at most a minute), then sends `signal` and
/// returns the exit status and standard error.
fn interrupt(mut child: Child, signal: i32, ready: impl Fn() -> bool) -> (Option<i32>, String) {
    let started = Instant::now();
    while !ready() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(child.try_wait().unwrap().is_none(), "the command ended before the signal (after {:?})", started.elapsed());
    unsafe { libc::kill(child.id() as i32, signal) };
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn sigterm_leaves_a_whole_json_trace() {
    let s = Scratch::new("sig-json");
    let trace = s.path("run.json");
    let (code, stderr) = interrupt(start_bench(&s, &trace), libc::SIGTERM, || logged(&s) >= 3);
    assert_eq!(code, Some(128 + libc::SIGTERM), "{stderr}");
    assert!(logged(&s) >= 3, "the streamed iteration log keeps the iterations that ran: {stderr}");
    assert!(stderr.contains("stopped by SIGTERM at an iteration boundary"), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).expect("the trace exists")).expect("whole JSON");
    let events = json["traceEvents"].as_array().expect("Chrome trace events");
    let iterations = events.iter().filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with("iter "))).count();
    assert!(iterations > 0, "the iterations that ran are in the trace: {stderr}");
}

#[test]
fn sigint_and_sighup_leave_a_lumen_trace_that_stands_alone() {
    for signal in [libc::SIGINT, libc::SIGHUP] {
        let s = Scratch::new("sig-lumen");
        let trace = s.path("run.lumen");
        let (code, stderr) = interrupt(start_bench(&s, &trace), signal, || logged(&s) >= 3);
        assert_eq!(code, Some(128 + signal), "{stderr}");
        let alone = s.path("copy/run.lumen");
        std::fs::create_dir_all(s.path("copy")).unwrap();
        std::fs::copy(&trace, &alone).unwrap();
        let t = lumen_trace::store::read_trace(std::path::Path::new(&alone)).expect("the .lumen file alone opens");
        assert_eq!(t.meta("complete"), Some("true"), "the trace was finalised");
        assert!(!t.iterations.is_empty(), "it holds the iterations that ran: {stderr}");
    }
}

/// `lumen profile` passes SIGTERM on to its command, waits for it, and still writes its trace.
#[test]
fn lumen_profile_passes_sigterm_on_and_writes_its_trace() {
    let s = Scratch::new("sig-profile");
    let out = s.path("profiled.lumen");
    let child = Command::new(lumen_bin())
        .args(["profile", "-o", &out, "--", "sh", "-c", "trap 'kill $! 2>/dev/null; exit 7' TERM; sleep 30 >/dev/null 2>&1 & wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lumen starts");
    let started = Instant::now();
    let (code, stderr) = interrupt(child, libc::SIGTERM, || started.elapsed() > Duration::from_secs(2));
    assert_eq!(code, Some(7), "lumen profile exits as its command did after the signal: {stderr}");
    let t = lumen_trace::store::read_trace(std::path::Path::new(&out)).expect("the trace is written");
    assert_eq!(t.meta("exit_status"), Some("7"), "{stderr}");
}
