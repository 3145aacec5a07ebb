//! The instrumentation API: spans (RAII guards), instant marks and counters, each with a
//! category and optional arguments, sent to the sinks that are on.
//!
//! With every sink off, a call costs one relaxed atomic load and allocates nothing: names are
//! `&'static str` or built by a closure that runs only when a sink is on. The recorder sink keeps
//! rows in a bounded in-memory buffer that the trace writer drains.

use crate::model::{CounterRow, MarkRow, SpanRow};
use crate::now_ns;
use std::borrow::Cow;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

/// What a span or mark is about; each category can be switched on separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// One range per engine iteration.
    Iteration,
    /// The iteration's phases: admit, schedule, prepare, forward, sample, update.
    Phase,
    /// Per layer and per op inside the forward pass, scheduler and KV internals (`LUMEN_NVTX_DEBUG`).
    Debug,
    /// The request API: submit, tokenize, first token, stream chunk, detokenize, finish (`LUMEN_API_NVTX`).
    Api,
    /// Host allocations (`LUMEN_PROFILE_RECORD_ALLOC`).
    Alloc,
    /// Time blocked on locks and channels (`LUMEN_PROFILE_RECORD_WAITS`).
    Wait,
}

impl Category {
    pub fn name(self) -> &'static str {
        match self {
            Category::Iteration => "iteration",
            Category::Phase => "phase",
            Category::Debug => "debug",
            Category::Api => "api",
            Category::Alloc => "alloc",
            Category::Wait => "wait",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Bit set of the categories that are recorded; 0 means every sink is off.
static ACTIVE: AtomicU8 = AtomicU8::new(0);
/// Categories switched on by configuration (iterations and phases by default); `ACTIVE` holds
/// them only while recording.
static CONFIGURED: AtomicU8 = AtomicU8::new(0b11);
static RECORDING: AtomicBool = AtomicBool::new(false);
/// The engine iteration now running, or `u64::MAX` outside iterations.
static CURRENT_ITERATION: AtomicU64 = AtomicU64::new(u64::MAX);
/// Most rows the recorder holds before it drops new ones (the writer drains it at iteration ends).
const RECORDER_CAPACITY: usize = 4_000_000;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Set while this thread appends to the recorder, so the allocator does not time (and record)
    /// the recorder's own allocations.
    static IN_RECORDER: Cell<bool> = const { Cell::new(false) };
    static TID: u64 = current_tid();
}

fn current_tid() -> u64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions.
        unsafe { libc_gettid() }
    }
    #[cfg(not(target_os = "linux"))]
    {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::thread::current().id().hash(&mut h);
        h.finish()
    }
}

#[cfg(target_os = "linux")]
unsafe fn libc_gettid() -> u64 {
    extern "C" {
        fn gettid() -> i32;
    }
    gettid() as u64
}

/// The recorder's buffered rows.
#[derive(Default)]
pub struct Recorded {
    pub spans: Vec<SpanRow>,
    pub marks: Vec<MarkRow>,
    pub counters: Vec<CounterRow>,
    /// Threads seen, with their names.
    pub threads: Vec<(u64, String)>,
    /// Rows dropped because the buffer was full.
    pub dropped: u64,
}

impl Recorded {
    fn len(&self) -> usize {
        self.spans.len() + self.marks.len() + self.counters.len()
    }
}

static BUFFER: Mutex<Option<Recorded>> = Mutex::new(None);

/// Chooses which categories are recorded when recording is on. Iterations and phases are always
/// included; the others follow their switches.
pub fn configure(debug: bool, api: bool, alloc: bool, wait: bool) {
    let mut bits = Category::Iteration.bit() | Category::Phase.bit();
    for (on, c) in [(debug, Category::Debug), (api, Category::Api), (alloc, Category::Alloc), (wait, Category::Wait)] {
        if on {
            bits |= c.bit();
        }
    }
    CONFIGURED.store(bits, Ordering::Relaxed);
    if RECORDING.load(Ordering::Relaxed) {
        ACTIVE.store(bits, Ordering::Relaxed);
    }
}

/// Starts recording (a profiling window opened).
pub fn start_recording() {
    BUFFER.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(Recorded::default);
    RECORDING.store(true, Ordering::Relaxed);
    ACTIVE.store(CONFIGURED.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Stops recording (the window closed); buffered rows stay until drained.
pub fn stop_recording() {
    RECORDING.store(false, Ordering::Relaxed);
    ACTIVE.store(0, Ordering::Relaxed);
}

pub fn is_recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// Takes every buffered row.
pub fn drain() -> Recorded {
    BUFFER.lock().unwrap_or_else(|e| e.into_inner()).as_mut().map(std::mem::take).unwrap_or_default()
}

/// Tags the rows that follow with iteration `iter` (`None` outside iterations).
pub fn set_iteration(iter: Option<u64>) {
    CURRENT_ITERATION.store(iter.unwrap_or(u64::MAX), Ordering::Relaxed);
}

fn iteration() -> Option<u64> {
    let i = CURRENT_ITERATION.load(Ordering::Relaxed);
    (i != u64::MAX).then_some(i)
}

#[inline(always)]
fn enabled(category: Category) -> bool {
    !cfg!(feature = "no-spans") && ACTIVE.load(Ordering::Relaxed) & category.bit() != 0
}

/// Whether `category` is being recorded right now.
#[inline(always)]
pub fn category_enabled(category: Category) -> bool {
    enabled(category)
}

/// Records a finished span measured by the caller (for code that cannot hold a guard).
pub fn record_span(category: Category, name: &'static str, start_ns: u64, end_ns: u64, args: Option<String>) {
    if !enabled(category) {
        return;
    }
    let depth = DEPTH.with(|d| d.get());
    let iteration = iteration();
    push(|b| {
        b.spans.push(SpanRow {
            start_ns,
            end_ns,
            tid: TID.with(|t| *t),
            name: name.to_string(),
            category: category.name().to_string(),
            depth,
            iteration,
            args,
        })
    });
}

/// Runs `blocking`, recording the time it spends as a `wait` range named `name` when waits are
/// recorded: the counterpart of Python GIL visibility for lumen's threads.
#[inline]
pub fn wait<T>(name: &'static str, blocking: impl FnOnce() -> T) -> T {
    if !enabled(Category::Wait) {
        return blocking();
    }
    let start = now_ns();
    let out = blocking();
    record_span(Category::Wait, name, start, now_ns(), None);
    out
}

/// Whether this thread is inside the recorder right now.
pub fn in_recorder() -> bool {
    IN_RECORDER.with(|r| r.get())
}

fn push(f: impl FnOnce(&mut Recorded)) {
    IN_RECORDER.with(|r| r.set(true));
    push_locked(f);
    IN_RECORDER.with(|r| r.set(false));
}

fn push_locked(f: impl FnOnce(&mut Recorded)) {
    let mut guard = BUFFER.lock().unwrap_or_else(|e| e.into_inner());
    let buf = guard.get_or_insert_with(Recorded::default);
    if buf.len() >= RECORDER_CAPACITY {
        buf.dropped += 1;
        return;
    }
    let tid = TID.with(|t| *t);
    if !buf.threads.iter().any(|(t, _)| *t == tid) {
        let name = std::thread::current().name().unwrap_or("unnamed").to_string();
        buf.threads.push((tid, name));
    }
    f(buf);
}

struct Open {
    start_ns: u64,
    name: Cow<'static, str>,
    category: Category,
    depth: u32,
    args: Option<String>,
}

/// An open span; it ends when dropped.
#[must_use = "a span ends when this guard is dropped"]
pub struct Span(Option<Open>);

impl Span {
    /// Replaces the span's name (for names known only once the work is under way).
    pub fn rename(&mut self, name: impl FnOnce() -> String) {
        if let Some(open) = &mut self.0 {
            open.name = Cow::Owned(name());
        }
    }

    /// Attaches arguments (a JSON object text), built only when the span is recorded.
    pub fn set_args(&mut self, args: impl FnOnce() -> String) {
        if let Some(open) = &mut self.0 {
            open.args = Some(args());
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(open) = self.0.take() {
            DEPTH.with(|d| d.set(open.depth));
            let end_ns = now_ns();
            let iteration = iteration();
            push(|b| {
                b.spans.push(SpanRow {
                    start_ns: open.start_ns,
                    end_ns,
                    tid: TID.with(|t| *t),
                    name: open.name.into_owned(),
                    category: open.category.name().to_string(),
                    depth: open.depth,
                    iteration,
                    args: open.args,
                })
            });
        }
    }
}

fn open(category: Category, name: Cow<'static, str>) -> Span {
    let depth = DEPTH.with(|d| {
        let depth = d.get();
        d.set(depth + 1);
        depth
    });
    Span(Some(Open { start_ns: now_ns(), name, category, depth, args: None }))
}

/// Opens a span with a static name.
#[inline]
pub fn span(category: Category, name: &'static str) -> Span {
    if !enabled(category) {
        return Span(None);
    }
    open(category, Cow::Borrowed(name))
}

/// Opens a span whose name is built only when the category is recorded.
#[inline]
pub fn span_named(category: Category, name: impl FnOnce() -> String) -> Span {
    if !enabled(category) {
        return Span(None);
    }
    open(category, Cow::Owned(name()))
}

/// Records an instant event.
#[inline]
pub fn mark(category: Category, name: &'static str, args: impl FnOnce() -> Option<String>) {
    if !enabled(category) {
        return;
    }
    let ts_ns = now_ns();
    let (iteration, args) = (iteration(), args());
    push(|b| {
        b.marks.push(MarkRow {
            ts_ns,
            tid: TID.with(|t| *t),
            name: name.to_string(),
            category: category.name().to_string(),
            iteration,
            args,
        })
    });
}

/// Records a counter sample (any sink on).
#[inline]
pub fn counter(name: &'static str, value: impl FnOnce() -> f64) {
    if cfg!(feature = "no-spans") || ACTIVE.load(Ordering::Relaxed) == 0 {
        return;
    }
    let (ts_ns, value) = (now_ns(), value());
    push(|b| b.counters.push(CounterRow { ts_ns, name: name.to_string(), device: None, value }));
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Serialises tests that switch the process-wide recorder.
    pub static RECORDER_LOCK: Mutex<()> = Mutex::new(());

    #[test]
    fn off_records_nothing_and_on_records_nested_spans() {
        let _g = RECORDER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        configure(false, false, false, false);
        stop_recording();
        drain();
        {
            let _a = span(Category::Phase, "ignored");
            mark(Category::Phase, "ignored", || None);
        }
        assert_eq!(drain().len(), 0);

        start_recording();
        set_iteration(Some(4));
        {
            let mut outer = span_named(Category::Iteration, || "iter 4".into());
            {
                let _inner = span(Category::Phase, "forward");
                let _debug = span(Category::Debug, "layer 0");
            }
            outer.rename(|| "iter 4: 1 ctx reqs, 2 gen reqs".into());
            counter("kv_used_blocks", || 12.0);
        }
        set_iteration(None);
        stop_recording();
        let r = drain();
        assert_eq!(r.spans.len(), 2, "the debug category is off");
        let forward = &r.spans[0];
        let iter = &r.spans[1];
        assert_eq!((forward.name.as_str(), forward.depth, forward.iteration), ("forward", 1, Some(4)));
        assert_eq!((iter.name.as_str(), iter.depth, iter.category.as_str()), ("iter 4: 1 ctx reqs, 2 gen reqs", 0, "iteration"));
        assert!(iter.start_ns <= forward.start_ns && forward.end_ns <= iter.end_ns);
        assert_eq!(r.counters.len(), 1);
        assert_eq!(r.threads.len(), 1);
    }
}
