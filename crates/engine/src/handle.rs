//! The engine on its own thread: callers on any thread submit requests, stream their tokens and
//! abort them, while the loop steps whenever there is work and sleeps when there is none.

use crate::engine::Engine;
use crate::request::{Request, RequestId, RequestStream};
use crate::stats::IterationStats;
use lumen_trace::instrument;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

enum Command {
    Submit(RequestId, Request, Sender<crate::request::RequestEvent>),
    Abort(RequestId),
}

pub struct EngineHandle {
    commands: Option<Sender<Command>>,
    next_id: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl EngineHandle {
    /// Starts the loop; every iteration's statistics go to `stats` when given.
    pub fn spawn(mut engine: Engine, stats: Option<Sender<IterationStats>>) -> Self {
        let (tx, rx) = channel::<Command>();
        let thread = std::thread::Builder::new()
            .name("lumen-engine".into())
            .spawn(move || run(&mut engine, rx, stats))
            .expect("the engine thread starts");
        EngineHandle { commands: Some(tx), next_id: Arc::new(AtomicU64::new(0)), thread: Some(thread) }
    }

    pub fn submit(&self, request: Request) -> RequestStream {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        instrument::mark(instrument::Category::Api, "submit", || Some(format!("{{\"request\":{id},\"flow\":{id}}}")));
        let (tx, rx) = channel();
        if let Some(c) = &self.commands {
            let _ = c.send(Command::Submit(id, request, tx));
        }
        RequestStream { id, events: rx }
    }

    pub fn abort(&self, id: RequestId) {
        if let Some(c) = &self.commands {
            let _ = c.send(Command::Abort(id));
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

fn apply(engine: &mut Engine, command: Command) {
    match command {
        Command::Submit(id, request, events) => engine.add_request(id, request, events),
        Command::Abort(id) => engine.abort(id),
    }
}

fn run(engine: &mut Engine, commands: Receiver<Command>, stats: Option<Sender<IterationStats>>) {
    loop {
        if !engine.has_work() {
            match instrument::wait("engine idle: wait for requests", || commands.recv()) {
                Ok(c) => apply(engine, c),
                Err(_) => return,
            }
        }
        while let Ok(c) = commands.try_recv() {
            apply(engine, c);
        }
        if engine.has_work() {
            match engine.step() {
                Ok(out) => {
                    if let Some(s) = &stats {
                        let _ = s.send(out.stats);
                    }
                }
                Err(e) => {
                    lumen_trace::status!("[lumen] engine failed: {e:#}");
                    engine.fail_all(&format!("{e:#}"));
                    return;
                }
            }
        }
    }
}
