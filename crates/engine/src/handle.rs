//! The engine on its own thread: callers on any thread submit requests, stream their tokens and
//! abort them, open and close profiling windows, and read the engine's load, while the loop steps
//! whenever there is work and sleeps when there is none.

use crate::engine::Engine;
use crate::profiling::Profiler;
use crate::request::{FinishReason, Request, RequestEvent, RequestId, RequestLimits, RequestStream};
use crate::stats::IterationStats;
use anyhow::Result;
use lumen_trace::instrument;
use lumen_trace::window::ProfileWindows;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A finished trace: its path and the iterations it holds (`None` when nothing was recorded).
pub type FinishedTrace = Option<(PathBuf, u64)>;

/// Builds the profiler for a window the caller asked for, once the engine knows which
/// iterations it covers.
pub type MakeProfiler = Box<dyn FnOnce(&ProfileWindows) -> Result<Profiler> + Send>;

/// Why a profiling command was refused.
#[derive(Debug)]
pub enum ProfileRefusal {
    /// A window is already pending or open (an environment window or an earlier start).
    AlreadyProfiling,
    /// There is no window to stop.
    NotProfiling,
    /// The trace could not be started or written.
    Failed(String),
}

/// Too many requests are waiting; the request was not submitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueFull {
    pub waiting: usize,
}

/// The engine's load, read without waiting for it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EngineLoad {
    /// Requests in the batch.
    pub running: usize,
    /// Requests queued or preempted, waiting to be scheduled.
    pub waiting: usize,
    pub kv_used_blocks: usize,
    pub kv_total_blocks: usize,
}

/// What the loop publishes after every turn, plus the count of submitted requests not yet
/// scheduled, which the submitting thread raises itself so that `--max-queue` holds exactly.
#[derive(Default)]
struct Gauges {
    running: AtomicUsize,
    waiting: AtomicUsize,
    kv_used_blocks: AtomicUsize,
    kv_total_blocks: AtomicUsize,
    unscheduled: AtomicUsize,
}

enum Command {
    Submit(RequestId, Request, Sender<RequestEvent>),
    Abort(RequestId),
    AbortAll,
    StartProfile { start_step: u64, num_steps: Option<u64>, make: MakeProfiler, reply: Sender<Result<ProfileWindows, ProfileRefusal>> },
    StopProfile(Sender<Result<FinishedTrace, ProfileRefusal>>),
}

pub struct EngineHandle {
    commands: Option<Sender<Command>>,
    next_id: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<FinishedTrace>>>,
    limits: RequestLimits,
    gauges: Arc<Gauges>,
}

impl EngineHandle {
    /// Starts the loop; every iteration's statistics go to `stats` when given.
    pub fn spawn(mut engine: Engine, stats: Option<Sender<IterationStats>>) -> Self {
        let (tx, rx) = channel::<Command>();
        let limits = engine.limits();
        let gauges = Arc::new(Gauges::default());
        publish(&engine, &gauges);
        let loop_gauges = gauges.clone();
        let thread = std::thread::Builder::new()
            .name("lumen-engine".into())
            .spawn(move || run(&mut engine, rx, stats, &loop_gauges))
            .expect("the engine thread starts");
        EngineHandle { commands: Some(tx), next_id: Arc::new(AtomicU64::new(0)), thread: Some(thread), limits, gauges }
    }

    /// What every request must satisfy to run on this engine.
    pub fn limits(&self) -> RequestLimits {
        self.limits
    }

    /// The engine's load as of its last loop turn.
    pub fn load(&self) -> EngineLoad {
        let g = &self.gauges;
        EngineLoad {
            running: g.running.load(Ordering::Relaxed),
            waiting: g.waiting.load(Ordering::Relaxed),
            kv_used_blocks: g.kv_used_blocks.load(Ordering::Relaxed),
            kv_total_blocks: g.kv_total_blocks.load(Ordering::Relaxed),
        }
    }

    /// Submitted requests not yet scheduled for the first time.
    pub fn unscheduled(&self) -> usize {
        self.gauges.unscheduled.load(Ordering::SeqCst)
    }

    pub fn submit(&self, request: Request) -> RequestStream {
        self.gauges.unscheduled.fetch_add(1, Ordering::SeqCst);
        self.send_submit(request)
    }

    /// Submits `request` unless `max_waiting` requests are already submitted and not yet
    /// scheduled.
    pub fn try_submit(&self, request: Request, max_waiting: usize) -> Result<RequestStream, QueueFull> {
        self.gauges
            .unscheduled
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max_waiting).then_some(n + 1))
            .map_err(|waiting| QueueFull { waiting })?;
        Ok(self.send_submit(request))
    }

    fn send_submit(&self, request: Request) -> RequestStream {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        instrument::mark(instrument::Category::Api, "submit", || Some(format!("{{\"request\":{id},\"flow\":{id}}}")));
        let (tx, rx) = channel();
        self.send(Command::Submit(id, request, tx));
        RequestStream { id, events: rx }
    }

    /// Stops a request wherever it is; its blocks are free before the next iteration.
    pub fn abort(&self, id: RequestId) {
        self.send(Command::Abort(id));
    }

    /// Stops every request in the engine.
    pub fn abort_all(&self) {
        self.send(Command::AbortAll);
    }

    /// Opens a profiling window `start_step` iterations after the next one, for `num_steps`
    /// iterations or, without it, until [`EngineHandle::stop_profile`]. The reply names the
    /// window's iterations.
    pub fn start_profile(
        &self,
        start_step: u64,
        num_steps: Option<u64>,
        make: MakeProfiler,
    ) -> Receiver<Result<ProfileWindows, ProfileRefusal>> {
        let (reply, answer) = channel();
        self.send(Command::StartProfile { start_step, num_steps, make, reply });
        answer
    }

    /// Closes the profiling window at the next iteration boundary and finishes its trace; the
    /// reply comes once the trace is written. A window that already closed by itself (its
    /// `num_steps` ran, or the environment's windows passed) answers with its trace.
    pub fn stop_profile(&self) -> Receiver<Result<FinishedTrace, ProfileRefusal>> {
        let (reply, answer) = channel();
        self.send(Command::StopProfile(reply));
        answer
    }

    fn send(&self, command: Command) {
        if let Some(c) = &self.commands {
            let _ = c.send(command);
        }
    }

    /// Closes the command channel, lets the loop finish the work it has, and returns the trace
    /// it finished on the way out.
    pub fn shutdown(mut self) -> Result<FinishedTrace> {
        self.commands.take();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => anyhow::bail!("the engine thread panicked"),
            None => Ok(None),
        }
    }
}

impl Drop for EngineHandle {
    /// Closes the command channel; the loop finishes the work it has, then the thread ends.
    fn drop(&mut self) {
        self.commands.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The loop's state beside the engine.
struct LoopState {
    /// Requests submitted and not yet scheduled, each counted once in `Gauges::unscheduled`.
    unscheduled: HashSet<RequestId>,
    /// A trace that closed by itself, kept for the next stop command.
    closed_trace: Option<Result<FinishedTrace, ProfileRefusal>>,
}

impl LoopState {
    fn scheduled_or_gone(&mut self, id: RequestId, gauges: &Gauges) {
        if self.unscheduled.remove(&id) {
            gauges.unscheduled.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn publish(engine: &Engine, gauges: &Gauges) {
    gauges.running.store(engine.num_running(), Ordering::Relaxed);
    gauges.waiting.store(engine.num_waiting(), Ordering::Relaxed);
    gauges.kv_used_blocks.store(engine.kv_used_blocks(), Ordering::Relaxed);
    gauges.kv_total_blocks.store(engine.kv_blocks(), Ordering::Relaxed);
}

fn refusal(e: anyhow::Error) -> ProfileRefusal {
    ProfileRefusal::Failed(format!("{e:#}"))
}

fn apply(engine: &mut Engine, state: &mut LoopState, gauges: &Gauges, command: Command) {
    match command {
        Command::Submit(id, request, events) => {
            if engine.add_request(id, request, events) {
                state.unscheduled.insert(id);
            } else {
                gauges.unscheduled.fetch_sub(1, Ordering::SeqCst);
            }
        }
        Command::Abort(id) => {
            engine.abort(id);
            state.scheduled_or_gone(id, gauges);
        }
        Command::AbortAll => {
            engine.end_all(FinishReason::Aborted);
            gauges.unscheduled.fetch_sub(state.unscheduled.len(), Ordering::SeqCst);
            state.unscheduled.clear();
        }
        Command::StartProfile { start_step, num_steps, make, reply } => {
            let answer = if engine.is_profiling() {
                Err(ProfileRefusal::AlreadyProfiling)
            } else {
                let first = engine.next_iteration().saturating_add(start_step);
                let last = num_steps.map_or(u64::MAX, |n| first.saturating_add(n.max(1) - 1));
                let windows = ProfileWindows::between(first, last);
                make(&windows).map(|p| engine.enable_profiling(p)).map(|()| windows).map_err(refusal)
            };
            state.closed_trace = None;
            let _ = reply.send(answer);
        }
        Command::StopProfile(reply) => {
            let answer = if engine.is_profiling() {
                engine.stop_profiling().map_err(refusal)
            } else {
                state.closed_trace.take().unwrap_or(Err(ProfileRefusal::NotProfiling))
            };
            let _ = reply.send(answer);
        }
    }
}

fn run(engine: &mut Engine, commands: Receiver<Command>, stats: Option<Sender<IterationStats>>, gauges: &Gauges) -> Result<FinishedTrace> {
    let mut state = LoopState { unscheduled: HashSet::new(), closed_trace: None };
    loop {
        if !engine.has_work() {
            match instrument::wait("engine idle: wait for requests", || commands.recv()) {
                Ok(c) => apply(engine, &mut state, gauges, c),
                Err(_) => return engine.finish_profiling(),
            }
        }
        while let Ok(c) = commands.try_recv() {
            apply(engine, &mut state, gauges, c);
        }
        if engine.has_work() {
            match engine.step() {
                Ok(out) => {
                    for id in out.started.iter().chain(&out.finished) {
                        state.scheduled_or_gone(*id, gauges);
                    }
                    if let (Some(s), Some(finished)) = (&stats, out.stats) {
                        let _ = s.send(finished);
                    }
                    if engine.profile_windows_over() {
                        state.closed_trace = Some(engine.finish_profiling().map_err(refusal));
                    }
                }
                Err(e) => {
                    lumen_trace::status!("[lumen] engine failed: {e:#}");
                    engine.fail_all(&format!("{e:#}"));
                    publish(engine, gauges);
                    return engine.finish_profiling();
                }
            }
        }
        publish(engine, gauges);
    }
}
