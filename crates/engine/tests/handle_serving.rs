//! What a server needs from the engine handle: the queue bound, aborts that free a request's
//! blocks before the next iteration, the load it publishes, and profiling windows opened and
//! closed on request.

use lumen_engine::{
    Engine, EngineConfig, EngineHandle, FinishReason, ProfileRefusal, Profiler, Request, RequestEvent, SamplingParams, StopConditions,
};
use lumen_model::load_model;
use lumen_test_support::scratch::Scratch;
use lumen_trace::store::read_trace;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn handle(max_batch_size: usize) -> EngineHandle {
    let config = EngineConfig { max_batch_size, ..EngineConfig::default() };
    EngineHandle::spawn(Engine::new(Arc::new(load_model("tiny").unwrap()), config).unwrap(), None)
}

fn long_request(first: u32) -> Request {
    Request {
        prompt: vec![first, 2, 3],
        sampling: SamplingParams::default(),
        stop: StopConditions { max_tokens: 400, stop_ids: vec![], ignore_eos: true },
    }
}

/// Waits until `ready` holds, for at most ten seconds.
fn eventually(what: &str, ready: impl Fn() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn finish_reason(events: &std::sync::mpsc::Receiver<RequestEvent>) -> FinishReason {
    loop {
        match events.recv_timeout(Duration::from_secs(10)).expect("the request finishes") {
            RequestEvent::Finished { reason, .. } => return reason,
            RequestEvent::Token { .. } => {}
        }
    }
}

#[test]
fn the_queue_bound_counts_requests_not_yet_scheduled() {
    let h = handle(1);
    let running = h.submit(long_request(1));
    running.events.recv_timeout(Duration::from_secs(10)).expect("the first request runs");
    eventually("the running request to leave the queue", || h.unscheduled() == 0);
    let waiting: Vec<_> = (0..2).map(|i| h.try_submit(long_request(4 + i), 2).expect("room for two")).collect();
    assert_eq!(h.unscheduled(), 2);
    let Err(refused) = h.try_submit(long_request(9), 2) else { panic!("a third waiting request is refused") };
    assert_eq!(refused.waiting, 2);
    // An aborted waiting request leaves the queue at once, making room for another.
    h.abort(waiting[0].id);
    assert_eq!(finish_reason(&waiting[0].events), FinishReason::Aborted);
    eventually("the queue to shrink", || h.unscheduled() == 1);
    assert!(h.try_submit(long_request(9), 2).is_ok());
    // A request the engine rejects never counts as waiting.
    let rejected = h.submit(Request { prompt: vec![], ..long_request(1) });
    assert!(matches!(finish_reason(&rejected.events), FinishReason::Rejected(_)));
    eventually("the rejected request to leave the count", || h.unscheduled() == 2);
    h.abort_all();
    eventually("every request to end", || h.unscheduled() == 0 && h.load().running == 0);
}

#[test]
fn an_abort_frees_the_blocks_before_the_next_iteration() {
    let h = handle(4);
    let a = h.submit(long_request(1));
    a.events.recv_timeout(Duration::from_secs(10)).unwrap();
    eventually("the request to run", || h.load().running == 1);
    assert!(h.load().kv_used_blocks >= 1);
    h.abort(a.id);
    assert_eq!(finish_reason(&a.events), FinishReason::Aborted);
    // Nothing else runs, so no iteration follows: the abort itself returned the blocks.
    eventually("the cache to empty", || h.load().running == 0 && h.load().kv_used_blocks == 0);
    assert!(h.load().kv_total_blocks > 0);
}

#[test]
fn profiling_windows_open_on_request_and_refuse_a_second_one() {
    let dir = Scratch::new("handle-profile");
    let path = PathBuf::from(dir.path("window.lumen"));
    let h = handle(4);
    let trace = path.clone();
    let make = Box::new(move |w: &lumen_trace::window::ProfileWindows| Profiler::new(&trace, Some(w.clone()), vec![]));
    let windows = h.start_profile(0, None, make).recv().unwrap().unwrap();
    assert_eq!(windows.ranges(), &[(0, u64::MAX)], "counted from the next iteration");
    let again = h.start_profile(0, Some(3), Box::new(|_: &lumen_trace::window::ProfileWindows| unreachable!("refused first")));
    assert!(matches!(again.recv().unwrap(), Err(ProfileRefusal::AlreadyProfiling)));
    let s = h.submit(Request { stop: StopConditions { max_tokens: 6, ..long_request(1).stop }, ..long_request(1) });
    assert_eq!(finish_reason(&s.events), FinishReason::Length);
    let (written, iterations) = h.stop_profile().recv().unwrap().unwrap().expect("a trace");
    assert_eq!((written.as_path(), iterations), (path.as_path(), 6));
    assert_eq!(read_trace(&path).unwrap().iterations.len(), 6);
    assert!(matches!(h.stop_profile().recv().unwrap(), Err(ProfileRefusal::NotProfiling)));
    // A window of num_steps closes by itself; the next stop returns its trace.
    let second = PathBuf::from(dir.path("steps.lumen"));
    let trace = second.clone();
    let make = Box::new(move |w: &lumen_trace::window::ProfileWindows| Profiler::new(&trace, Some(w.clone()), vec![]));
    assert_eq!(h.start_profile(2, Some(3), make).recv().unwrap().unwrap().ranges(), &[(8, 10)]);
    let s = h.submit(Request { stop: StopConditions { max_tokens: 20, ..long_request(1).stop }, ..long_request(1) });
    assert_eq!(finish_reason(&s.events), FinishReason::Length);
    let (_, iterations) = h.stop_profile().recv().unwrap().unwrap().expect("the closed window's trace");
    assert_eq!(iterations, 3);
    let rows = read_trace(&second).unwrap().iterations;
    assert_eq!(rows.iter().map(|r| r.iter).collect::<Vec<_>>(), [8, 9, 10]);
    // Once a window has closed by itself, another may start without a stop in between.
    let third = PathBuf::from(dir.path("third.lumen"));
    let make = Box::new(move |w: &lumen_trace::window::ProfileWindows| Profiler::new(&third, Some(w.clone()), vec![]));
    assert!(h.start_profile(0, Some(1), make).recv().unwrap().is_ok());
    let s = h.submit(Request { stop: StopConditions { max_tokens: 3, ..long_request(1).stop }, ..long_request(1) });
    assert_eq!(finish_reason(&s.events), FinishReason::Length);
    let fourth = PathBuf::from(dir.path("fourth.lumen"));
    let make = Box::new(move |w: &lumen_trace::window::ProfileWindows| Profiler::new(&fourth, Some(w.clone()), vec![]));
    assert!(h.start_profile(0, Some(1), make).recv().unwrap().is_ok(), "the closed window no longer holds the profiler");
}
