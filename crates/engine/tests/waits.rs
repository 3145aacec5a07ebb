//! With wait recording on, the time the engine thread spends idle waiting for requests and the
//! time a caller spends waiting for tokens become `wait` ranges on their own threads.

use lumen_engine::{EngineConfig, EngineHandle, Request, SamplingParams, StopConditions};
use lumen_model::load_model;
use lumen_trace::instrument;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn blocked_threads_are_recorded_as_waits() {
    instrument::configure(false, false, false, true);
    instrument::start_recording();
    let engine = lumen_engine::Engine::new(Arc::new(load_model("tiny").unwrap()), EngineConfig::default()).unwrap();
    let handle = EngineHandle::spawn(engine, None);
    std::thread::sleep(Duration::from_millis(30));
    let stream = handle.submit(Request {
        prompt: vec![1, 2, 3],
        sampling: SamplingParams::default(),
        stop: StopConditions { max_tokens: 4, stop_ids: vec![], ignore_eos: true },
    });
    let (tokens, _) = stream.collect();
    assert_eq!(tokens.len(), 4);
    drop(handle);
    instrument::stop_recording();
    let recorded = instrument::drain();
    let waits: Vec<_> = recorded.spans.iter().filter(|s| s.category == "wait").collect();
    let idle = waits.iter().find(|s| s.name == "engine idle: wait for requests").expect("the engine thread waited for work");
    assert!(idle.end_ns - idle.start_ns >= 20_000_000, "the idle wait covers the 30 ms before the first request");
    let caller = waits.iter().find(|s| s.name == "request stream: wait for tokens").expect("the caller waited for tokens");
    assert_ne!(idle.tid, caller.tid, "each wait is on the thread that blocked");
    let engine_thread = recorded.threads.iter().find(|(tid, _)| *tid == idle.tid).unwrap();
    assert_eq!(engine_thread.1, "lumen-engine");
}
