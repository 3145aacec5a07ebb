//! The instrumentation API: spans (RAII guards), instant marks and counters, each with a
//! category and optional arguments, sent to the sinks that are on.
//!
//! Two independent sinks:
//! - the recorder keeps rows in a bounded in-memory buffer that the trace writer drains; it records
//!   only while a profiling window is open ([`start_recording`] / [`stop_recording`]);
//! - NVTX ([`enable_nvtx`], [`nvtx_from_env`]) turns spans into NVTX thread ranges and marks into
//!   NVTX marks in the domain "lumen", all the time while it is on: the attached tool (Nsight
//!   Systems, a CUPTI client) picks its own capture window, as with TensorRT-LLM's default markers.
//!   Counters have no NVTX form and go to the recorder only.
//!
//! `ACTIVE` holds the configured categories while either sink is on and 0 otherwise, so with
//! every sink off a call costs one relaxed atomic load and allocates nothing: names are
//! `&'static str` or built by a closure that runs only when a sink is on. Past that gate each sink
//! checks its own switch; a span remembers at open which sinks it went to.

use crate::model::{CounterRow, MarkRow, SpanRow};
use crate::now_ns;
use std::borrow::Cow;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use crate::nvtx_sink;

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

/// Bit set of the categories some sink wants: `CONFIGURED` while recording or while NVTX is on,
/// 0 when every sink is off. The one load on the hot path.
static ACTIVE: AtomicU8 = AtomicU8::new(0);
/// Categories switched on by configuration (iterations and phases by default), for both sinks.
static CONFIGURED: AtomicU8 = AtomicU8::new(0b11);
/// Whether the recorder sink is on (a profiling window is open).
static RECORDING: AtomicBool = AtomicBool::new(false);
/// Serialises the switches so that `ACTIVE` always matches the last of them.
static SWITCHES: Mutex<()> = Mutex::new(());
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

/// This thread's OS thread id, where [`current_tid`] is one (what NVTX names threads by).
pub(crate) fn os_tid() -> Option<u32> {
    if cfg!(target_os = "linux") {
        TID.with(|t| u32::try_from(*t).ok())
    } else {
        None
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
    switch(|| CONFIGURED.store(bits, Ordering::Relaxed));
}

/// Applies one switch and recomputes `ACTIVE` from the sinks' states.
fn switch(change: impl FnOnce()) {
    let _g = SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
    change();
    let any_sink = RECORDING.load(Ordering::Relaxed) || nvtx_sink::on();
    ACTIVE.store(if any_sink { CONFIGURED.load(Ordering::Relaxed) } else { 0 }, Ordering::Relaxed);
}

/// Starts recording (a profiling window opened).
pub fn start_recording() {
    BUFFER.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(Recorded::default);
    switch(|| RECORDING.store(true, Ordering::Relaxed));
}

/// Stops recording (the window closed); buffered rows stay until drained. NVTX, if on, goes on.
pub fn stop_recording() {
    switch(|| RECORDING.store(false, Ordering::Relaxed));
}

pub fn is_recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// Switches the NVTX sink: while on, every span of a configured category is an NVTX thread range
/// and every mark an NVTX mark, in the domain "lumen", whether or not a profiling window is open.
/// The first switch on creates the domain, which is when NVTX loads the tool named by
/// `NVTX_INJECTION64_PATH`; with no tool loaded, each NVTX call is a null-pointer check.
/// With the `no-spans` feature it stays off.
pub fn enable_nvtx(on: bool) {
    switch(|| nvtx_sink::set(on && !cfg!(feature = "no-spans")));
}

/// Whether the NVTX sink is on.
pub fn nvtx_enabled() -> bool {
    nvtx_sink::on()
}

/// Switches the NVTX sink from the environment and returns whether it is on: on when
/// `NVTX_INJECTION64_PATH` is set (a tool such as Nsight Systems or a CUPTI client is attached) or
/// `LUMEN_NVTX=1`; `LUMEN_NVTX=0` (or `false`, `off`, `no`) forces it off. Called once at start-up.
pub fn nvtx_from_env() -> bool {
    let lumen_nvtx = std::env::var("LUMEN_NVTX").ok();
    let injection = std::env::var_os("NVTX_INJECTION64_PATH");
    let on = nvtx_wanted(lumen_nvtx.as_deref(), injection.as_deref());
    enable_nvtx(on);
    on
}

/// The decision of [`nvtx_from_env`]: `LUMEN_NVTX` wins when set to a value, else a tool's
/// injection path switches NVTX on.
fn nvtx_wanted(lumen_nvtx: Option<&str>, injection_path: Option<&std::ffi::OsStr>) -> bool {
    match lumen_nvtx.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("0" | "false" | "off" | "no") => false,
        Some("") | None => injection_path.is_some_and(|p| !p.is_empty()),
        Some(_) => true,
    }
}

/// Runs an NVTX call with the allocator's "inside a sink" flag set, so that allocations the tool
/// makes are not timed and do not send events back into NVTX from inside its own callback.
#[inline]
fn in_nvtx<R>(f: impl FnOnce() -> R) -> R {
    let prev = IN_RECORDER.with(|r| r.replace(true));
    let out = f();
    IN_RECORDER.with(|r| r.set(prev));
    out
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

/// Whether some sink (the recorder in a window, or NVTX) takes `category` right now.
#[inline(always)]
pub fn category_enabled(category: Category) -> bool {
    enabled(category)
}

/// Records a finished span measured by the caller (for code that cannot hold a guard). NVTX cannot
/// place a range in the past, so there it is a mark at the end, named `name`, whose payload is the
/// duration in ns.
pub fn record_span(category: Category, name: &'static str, start_ns: u64, end_ns: u64, args: Option<String>) {
    if !enabled(category) {
        return;
    }
    if nvtx_sink::on() {
        in_nvtx(|| nvtx_sink::mark(category, name, Some(end_ns.saturating_sub(start_ns))));
    }
    record_row(category, name, start_ns, end_ns, args);
}

/// The recorder's part of [`record_span`]: a row if a window is open.
fn record_row(category: Category, name: &'static str, start_ns: u64, end_ns: u64, args: Option<String>) {
    if !RECORDING.load(Ordering::Relaxed) {
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
    let _range = NvtxRange::push(Category::Wait, name);
    let start = now_ns();
    let out = blocking();
    if enabled(Category::Wait) {
        record_row(Category::Wait, name, start, now_ns(), None);
    }
    out
}

/// An NVTX thread range pushed if NVTX is on, popped when dropped (also on unwinding).
struct NvtxRange(bool);

impl NvtxRange {
    #[inline]
    fn push(category: Category, name: &str) -> Self {
        NvtxRange(nvtx_sink::on() && in_nvtx(|| nvtx_sink::push(category, name)))
    }
}

impl Drop for NvtxRange {
    fn drop(&mut self) {
        if self.0 {
            in_nvtx(nvtx_sink::pop);
        }
    }
}

/// Whether this thread is inside a sink (the recorder, or an NVTX call) right now.
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
    /// The recorder gets a row at the end (it was recording at the open).
    record: bool,
    /// An NVTX range was pushed at the open and is popped at the end.
    nvtx: bool,
    /// Keeps spans on the thread that opened them: their NVTX range is a thread range.
    _thread_bound: std::marker::PhantomData<*const ()>,
}

/// An open span; it ends when dropped, on the thread that opened it (it is not `Send`).
#[must_use = "a span ends when this guard is dropped"]
pub struct Span(Option<Open>);

impl Span {
    /// Replaces the span's name (for names known only once the work is under way).
    ///
    /// The recorder's row takes the new name. An NVTX range keeps the name it was pushed with
    /// (NVTX cannot rename a range), so NVTX also gets a mark of the span's category carrying the
    /// new name, inside the range.
    pub fn rename(&mut self, name: impl FnOnce() -> String) {
        if let Some(open) = &mut self.0 {
            let name = name();
            if open.nvtx && nvtx_sink::on() {
                in_nvtx(|| nvtx_sink::mark(open.category, &name, None));
            }
            if open.record {
                open.name = Cow::Owned(name);
            }
        }
    }

    /// Attaches arguments (a JSON object text), built only when the span is recorded.
    pub fn set_args(&mut self, args: impl FnOnce() -> String) {
        if let Some(open) = &mut self.0 {
            if open.record {
                open.args = Some(args());
            }
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(open) = self.0.take() {
            if !open.record {
                if open.nvtx {
                    in_nvtx(nvtx_sink::pop);
                }
                return;
            }
            DEPTH.with(|d| d.set(open.depth));
            let end_ns = now_ns();
            if open.nvtx {
                in_nvtx(nvtx_sink::pop);
            }
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

/// Opens a span of a category some sink takes: pushes the NVTX range if NVTX is on, and starts a
/// recorder row if a window is open. Depth counts recorded spans only.
fn open(category: Category, name: Cow<'static, str>) -> Span {
    let nvtx = nvtx_sink::on() && in_nvtx(|| nvtx_sink::push(category, &name));
    let record = RECORDING.load(Ordering::Relaxed);
    if !record {
        return Span(nvtx.then_some(Open {
            start_ns: 0,
            name,
            category,
            depth: 0,
            args: None,
            record,
            nvtx,
            _thread_bound: std::marker::PhantomData,
        }));
    }
    let depth = DEPTH.with(|d| {
        let depth = d.get();
        d.set(depth + 1);
        depth
    });
    Span(Some(Open { start_ns: now_ns(), name, category, depth, args: None, record, nvtx, _thread_bound: std::marker::PhantomData }))
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

/// Records an instant event (for NVTX, a mark named `name`; `args` go to the recorder only).
#[inline]
pub fn mark(category: Category, name: &'static str, args: impl FnOnce() -> Option<String>) {
    if !enabled(category) {
        return;
    }
    if nvtx_sink::on() {
        in_nvtx(|| nvtx_sink::mark(category, name, None));
    }
    if !RECORDING.load(Ordering::Relaxed) {
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

/// Records a counter sample while the recorder is on (NVTX has no counters in this API).
#[inline]
pub fn counter(name: &'static str, value: impl FnOnce() -> f64) {
    if cfg!(feature = "no-spans") || !RECORDING.load(Ordering::Relaxed) {
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

    /// What this thread sent to NVTX since the last call, leaving out thread naming.
    fn sent_to_nvtx() -> Vec<String> {
        nvtx_sink::SENT.with(|s| std::mem::take(&mut *s.borrow_mut())).into_iter().filter(|e| !e.starts_with("thread ")).collect()
    }

    #[test]
    fn off_records_nothing_and_on_records_nested_spans() {
        let _g = RECORDER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        enable_nvtx(false);
        configure(false, false, false, false);
        stop_recording();
        drain();
        sent_to_nvtx();
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
        assert_eq!(sent_to_nvtx(), Vec::<String>::new(), "NVTX is off");
    }

    #[test]
    fn both_sinks_off_do_nothing() {
        let _g = RECORDER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        enable_nvtx(false);
        configure(true, true, true, true);
        stop_recording();
        drain();
        sent_to_nvtx();
        assert!(!nvtx_enabled() && !is_recording());
        assert_eq!(ACTIVE.load(Ordering::Relaxed), 0);
        {
            let mut s = span_named(Category::Iteration, || panic!("names are built only when a sink is on"));
            s.rename(|| panic!("renames are built only when a sink is on"));
            let _p = span(Category::Phase, "forward");
            mark(Category::Api, "first token", || panic!("args are built only for the recorder"));
            counter("kv_used_blocks", || panic!("counters are sampled only while recording"));
            assert_eq!(wait("engine idle", || 3), 3);
            record_span(Category::Alloc, "slow allocation", 1, 2, None);
        }
        assert_eq!(drain().len(), 0);
        assert_eq!(sent_to_nvtx(), Vec::<String>::new());
        assert_eq!(DEPTH.with(|d| d.get()), 0);
    }

    #[test]
    fn nvtx_on_without_a_window_sends_ranges_but_records_nothing() {
        let _g = RECORDER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        configure(false, true, false, false);
        stop_recording();
        drain();
        enable_nvtx(true);
        sent_to_nvtx();
        assert!(nvtx_enabled() && !is_recording());
        assert!(category_enabled(Category::Phase) && category_enabled(Category::Api) && !category_enabled(Category::Debug));
        {
            let mut iter = span_named(Category::Iteration, || "iter 7".into());
            {
                let _forward = span(Category::Phase, "forward");
                let _layer = span(Category::Debug, "layer 0");
                mark(Category::Api, "first token", || panic!("args are built only for the recorder"));
            }
            iter.rename(|| "iter 7: 1 ctx reqs, 0 gen reqs".into());
            iter.set_args(|| panic!("args are built only for the recorder"));
            counter("kv_used_blocks", || panic!("counters go to the recorder only"));
            assert_eq!(wait("engine idle", || 5), 5, "waits are not configured");
        }
        assert_eq!(
            sent_to_nvtx(),
            [
                "push iteration:iter 7",
                "push phase:forward",
                "mark api:first token",
                "pop",
                "mark iteration:iter 7: 1 ctx reqs, 0 gen reqs",
                "pop"
            ]
        );
        configure(false, false, true, true);
        assert_eq!(wait("engine idle", || 5), 5);
        record_span(Category::Alloc, "slow allocation", 100, 175, Some("{}".into()));
        assert_eq!(sent_to_nvtx(), ["push wait:engine idle", "pop", "mark alloc:slow allocation payload=75"]);
        let r = drain();
        assert_eq!((r.len(), r.threads.len()), (0, 0), "the recorder records only in a window");
        assert_eq!(DEPTH.with(|d| d.get()), 0);
        enable_nvtx(false);
        assert!(!nvtx_enabled());
        assert_eq!(ACTIVE.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn nvtx_and_recorder_together() {
        let _g = RECORDER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        configure(false, false, false, false);
        stop_recording();
        drain();
        enable_nvtx(true);
        sent_to_nvtx();
        {
            // Opened before the window: an NVTX range only, and it does not count towards depth.
            let _before = span(Category::Phase, "before the window");
            start_recording();
            let mut iter = span_named(Category::Iteration, || "iter 1".into());
            {
                let _p = span(Category::Phase, "sample");
            }
            iter.rename(|| "iter 1: 2 gen reqs".into());
            mark(Category::Phase, "admitted", || Some("{\"n\":2}".into()));
            drop(iter);
            stop_recording();
            let _after = span(Category::Phase, "after the window");
        }
        let r = drain();
        let names: Vec<(&str, u32)> = r.spans.iter().map(|s| (s.name.as_str(), s.depth)).collect();
        assert_eq!(names, [("sample", 1), ("iter 1: 2 gen reqs", 0)]);
        assert_eq!((r.marks.len(), r.marks[0].args.as_deref()), (1, Some("{\"n\":2}")));
        assert_eq!(
            sent_to_nvtx(),
            [
                "push phase:before the window",
                "push iteration:iter 1",
                "push phase:sample",
                "pop",
                "mark iteration:iter 1: 2 gen reqs",
                "mark phase:admitted",
                "pop",
                "push phase:after the window",
                "pop",
                "pop"
            ]
        );
        configure(false, false, false, true);
        start_recording();
        assert_eq!(wait("engine idle", || 9), 9);
        stop_recording();
        let r = drain();
        let waits: Vec<(&str, &str, u32)> = r.spans.iter().map(|s| (s.name.as_str(), s.category.as_str(), s.depth)).collect();
        assert_eq!(waits, [("engine idle", "wait", 0)]);
        assert_eq!(sent_to_nvtx(), ["push wait:engine idle", "pop"]);
        enable_nvtx(false);
    }

    #[test]
    fn nvtx_environment_switches() {
        use std::ffi::OsStr;
        let tool = Some(OsStr::new("/opt/nsight/libToolsInjection64.so"));
        assert!(!nvtx_wanted(None, None));
        assert!(nvtx_wanted(None, tool));
        assert!(!nvtx_wanted(None, Some(OsStr::new(""))));
        assert!(nvtx_wanted(Some("1"), None));
        assert!(nvtx_wanted(Some("true"), None));
        assert!(!nvtx_wanted(Some("0"), tool), "LUMEN_NVTX=0 wins over an attached tool");
        assert!(!nvtx_wanted(Some("off"), tool));
        assert!(nvtx_wanted(Some(""), tool));
    }
}
