//! The injection: `InitializeInjection` subscribes to CUPTI, puts activity timestamps on the
//! host's monotonic clock (the clock lumen's own recorder uses), turns activity on for the whole
//! run or only between `cuProfilerStart` and `cuProfilerStop`, and writes the decoded rows to
//! `<dir>/<pid>.lumen` from a flusher thread every half second and once more at exit.
//!
//! A process that leaves SIGINT, SIGTERM or SIGHUP at their default action would die without
//! running `atexit`; for those signals the collector installs a handler that wakes the flusher,
//! which writes and finalises the trace and then ends the process by the same signal (so its exit
//! status is unchanged). A second signal ends it at once. Signals the process handles or ignores
//! are left to it: it exits normally and the `atexit` flush runs. That holds too for a handler
//! the process installs later that chains to ours (tokio's and signal-hook's do): the flusher
//! sees the handler is no longer its own and lets the process stop itself.
//!
//! Any failure (no CUPTI, CUPTI taken by another subscriber, an unwritable directory) is printed
//! and the process runs on untraced.

use crate::cupti::check;
use crate::options::{Capture, CollectorOptions, GraphTrace, RangeEnd};
use crate::records::{graph_launch_start, Rows};
use anyhow::{bail, Context, Result};
use cudarc::cupti::sys;
use lumen_trace::model::ProcessRow;
use lumen_trace::store::{Batch, GpuBatch, TraceWriter};
use std::alloc::{alloc, dealloc, Layout};
use std::collections::{BTreeSet, HashSet};
use std::ffi::{c_int, c_void, CStr};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// Activity buffer size. Only full buffers reach a periodic flush, so this bounds what a killed
/// process loses (its last partly filled buffers), besides the last flush interval.
const BUFFER_BYTES: usize = 1 << 20;
const FLUSH_EVERY: Duration = Duration::from_millis(500);
const FLUSH_FORCED: u32 = 1;

struct State {
    options: CollectorOptions,
    pid: u32,
    writer: Option<TraceWriter>,
    rows: Rows,
    process: Option<ProcessRow>,
    /// Activity is on (a capture window is open, or capture is everything).
    active: bool,
    /// No window will open again (`--capture-range-end stop` after the first stop).
    done: bool,
    windows: u32,
    /// Capture windows as (open, close) host times; the last is open-ended while collecting.
    /// Graph-launch records are kept only inside them (see `start`).
    window_times: Vec<(u64, u64)>,
    /// Threads already written to the `threads` table.
    named_threads: HashSet<u64>,
    /// The devices the collected GPU operations ran on, named in the trace's meta at the end.
    devices: BTreeSet<u32>,
}

static STATE: OnceLock<Mutex<State>> = OnceLock::new();

fn state() -> Option<MutexGuard<'static, State>> {
    STATE.get().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()))
}

/// CUDA calls this once when the process creates its first context.
#[no_mangle]
pub extern "C" fn InitializeInjection() -> c_int {
    match start() {
        Ok(()) => 1,
        Err(e) => {
            lumen_trace::status!("[lumen profile] process {}: {e:#}; it runs untraced", std::process::id());
            0
        }
    }
}

/// CUPTI's timestamp source: lumen's clock, so GPU activity lines up with lumen's own rows.
extern "C" fn host_clock_ns() -> u64 {
    lumen_trace::now_ns()
}

fn process_name() -> String {
    std::fs::read("/proc/self/cmdline")
        .map(|b| {
            b.split(|&c| c == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect::<Vec<_>>().join(" ")
        })
        .unwrap_or_default()
}

fn start() -> Result<()> {
    let options = CollectorOptions::from_env()?;
    if !unsafe { sys::is_culib_present() } {
        bail!("CUPTI (libcupti.so) could not be loaded; set LD_LIBRARY_PATH to the CUDA toolkit's lib directory");
    }
    let pid = std::process::id();
    let name = process_name();
    let path = options.dir.join(format!("{pid}.lumen"));
    let meta = vec![
        ("collector".to_string(), "cupti".to_string()),
        ("pid".into(), pid.to_string()),
        ("process".into(), name.clone()),
        ("clock".into(), "CLOCK_MONOTONIC ns".into()),
        ("capture".into(), format!("{:?}", options.capture)),
        ("cuda_graph_trace".into(), format!("{:?}", options.graph_trace)),
    ];
    let writer = TraceWriter::create(&path, &meta)?;
    let (capture, graph_trace, cuda) = (options.capture, options.graph_trace, options.cuda);
    let state = State {
        options,
        pid,
        writer: Some(writer),
        rows: Rows::default(),
        process: Some(ProcessRow { pid, name }),
        active: false,
        done: false,
        windows: 0,
        window_times: Vec::new(),
        named_threads: HashSet::new(),
        devices: BTreeSet::new(),
    };
    if STATE.set(Mutex::new(state)).is_err() {
        return Ok(());
    }
    unsafe {
        check(sys::cuptiActivityRegisterTimestampCallback(Some(host_clock_ns)), "cuptiActivityRegisterTimestampCallback")?;
        // OS thread ids (gettid), as lumen's recorder writes them, instead of pthread handles.
        check(sys::cuptiSetThreadIdType(sys::CUpti_ActivityThreadIdType::CUPTI_ACTIVITY_THREAD_ID_TYPE_SYSTEM), "cuptiSetThreadIdType")?;
        check(sys::cuptiActivityRegisterCallbacks(Some(buffer_requested), Some(buffer_completed)), "cuptiActivityRegisterCallbacks")?;
        let mut subscriber: sys::CUpti_SubscriberHandle = std::ptr::null_mut();
        let r = sys::cuptiSubscribe(&mut subscriber, Some(on_callback), std::ptr::null_mut());
        if r == sys::CUptiResult::CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED {
            bail!("CUPTI is already taken by another subscriber in this process (another profiler or tool)");
        }
        check(r, "cuptiSubscribe")?;
        // Graph-launch tracing cannot be switched on once graphs exist (CUPTI crashes the
        // process), so it stays on from the start; records outside the windows are dropped.
        if graph_trace == GraphTrace::Graph && cuda {
            check(sys::cuptiActivityEnable(sys::CUpti_ActivityKind::CUPTI_ACTIVITY_KIND_GRAPH_TRACE), "cuptiActivityEnable(GRAPH_TRACE)")?;
        }
        match capture {
            Capture::Everything => open_window()?,
            Capture::ProfilerApi => {
                let domain = sys::CUpti_CallbackDomain::CUPTI_CB_DOMAIN_DRIVER_API;
                for cbid in [
                    sys::CUpti_driver_api_trace_cbid::CUPTI_DRIVER_TRACE_CBID_cuProfilerStart,
                    sys::CUpti_driver_api_trace_cbid::CUPTI_DRIVER_TRACE_CBID_cuProfilerStop,
                ] {
                    check(sys::cuptiEnableCallback(1, subscriber, domain, cbid as u32), "cuptiEnableCallback")?;
                }
            }
        }
    }
    let wake = wake_pipe()?;
    std::thread::Builder::new().name("lumen-collect".into()).spawn(move || flusher(wake)).context("cannot start the flusher thread")?;
    unsafe { libc::atexit(at_exit) };
    catch_default_stop_signals();
    Ok(())
}

/// The write end of the pipe that wakes the flusher when a stop signal arrives (-1: none yet).
static WAKE_WRITE: AtomicI32 = AtomicI32::new(-1);
/// The stop signal received, 0 before any.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
const STOP_SIGNALS: [c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// A non-blocking, close-on-exec pipe; returns its read end and publishes its write end.
fn wake_pipe() -> Result<c_int> {
    let mut ends = [0 as c_int; 2];
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        bail!("cannot create the flusher's pipe: {}", std::io::Error::last_os_error());
    }
    WAKE_WRITE.store(ends[1], Ordering::SeqCst);
    Ok(ends[0])
}

/// Flushes every [`FLUSH_EVERY`], or at once when a stop signal wakes it; after a signal it
/// finalises the trace and ends the process by that signal.
fn flusher(wake: c_int) {
    loop {
        let mut poll = libc::pollfd { fd: wake, events: libc::POLLIN, revents: 0 };
        unsafe { libc::poll(&mut poll, 1, FLUSH_EVERY.as_millis() as c_int) };
        let signal = STOP_SIGNAL.load(Ordering::SeqCst);
        if signal != 0 && !handler_is_ours(signal) {
            // The process installed its own handler after ours and chains to it (as tokio and
            // signal-hook do): it handles the signal and exits its own way, past `atexit`.
            STOP_SIGNAL.store(0, Ordering::SeqCst);
        } else if signal != 0 {
            unsafe { sys::cuptiActivityFlushAll(FLUSH_FORCED) };
            write_rows(true);
            unsafe {
                libc::signal(signal, libc::SIG_DFL);
                libc::kill(libc::getpid(), signal);
            }
            return;
        }
        unsafe { sys::cuptiActivityFlushAll(0) };
        write_rows(false);
    }
}

extern "C" fn on_stop_signal(signal: c_int) {
    // Async-signal-safe only: an atomic swap, write(2), and on a second signal the default action.
    if STOP_SIGNAL.swap(signal, Ordering::SeqCst) != 0 {
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
        return;
    }
    let byte = 1u8;
    unsafe { libc::write(WAKE_WRITE.load(Ordering::SeqCst), (&byte as *const u8).cast(), 1) };
}

/// Whether `signal`'s handler is still [`on_stop_signal`].
fn handler_is_ours(signal: c_int) -> bool {
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    let read = unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) } == 0;
    read && current.sa_sigaction == on_stop_signal as *const () as libc::sighandler_t
}

/// Installs [`on_stop_signal`] for each stop signal still at its default action.
fn catch_default_stop_signals() {
    for signal in STOP_SIGNALS {
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) == 0 && current.sa_sigaction == libc::SIG_DFL {
                let mut ours: libc::sigaction = std::mem::zeroed();
                ours.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
                ours.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut ours.sa_mask);
                libc::sigaction(signal, &ours, std::ptr::null_mut());
            }
        }
    }
}

/// The activity kinds a capture window switches on and off (graph launches stay on, see `start`).
fn kinds(options: &CollectorOptions) -> Vec<sys::CUpti_ActivityKind> {
    use sys::CUpti_ActivityKind as K;
    let mut kinds = Vec::new();
    if options.cuda {
        kinds.extend([
            K::CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL,
            K::CUPTI_ACTIVITY_KIND_MEMCPY,
            K::CUPTI_ACTIVITY_KIND_MEMSET,
            K::CUPTI_ACTIVITY_KIND_SYNCHRONIZATION,
        ]);
    }
    if options.api {
        kinds.extend([K::CUPTI_ACTIVITY_KIND_RUNTIME, K::CUPTI_ACTIVITY_KIND_DRIVER]);
    }
    if options.nvtx {
        kinds.push(K::CUPTI_ACTIVITY_KIND_MARKER);
    }
    kinds
}

/// Turns activity on. The state lock is not held while CUPTI is called: CUPTI may deliver a
/// buffer (which takes the lock) from inside its own calls.
fn open_window() -> Result<()> {
    let kinds = {
        let mut s = state().context("the collector is not initialised")?;
        if s.active || s.done {
            return Ok(());
        }
        s.active = true;
        s.windows += 1;
        s.window_times.push((lumen_trace::now_ns(), u64::MAX));
        kinds(&s.options)
    };
    for kind in kinds {
        check(unsafe { sys::cuptiActivityEnable(kind) }, &format!("cuptiActivityEnable({kind:?})"))?;
    }
    Ok(())
}

fn close_window() -> Result<()> {
    let kinds = {
        let mut s = state().context("the collector is not initialised")?;
        if !s.active {
            return Ok(());
        }
        s.active = false;
        s.done = s.options.range_end == RangeEnd::Stop;
        let now = lumen_trace::now_ns();
        if let Some(last) = s.window_times.last_mut() {
            last.1 = now;
        }
        kinds(&s.options)
    };
    // Hand over the window's records before their kinds go off: kernel-node records still
    // buffered when CONCURRENT_KERNEL is disabled get an end time from the next flush instead
    // of their own (seen with graph replays under `--cuda-graph-trace node`).
    unsafe { sys::cuptiActivityFlushAll(FLUSH_FORCED) };
    for kind in kinds {
        check(unsafe { sys::cuptiActivityDisable(kind) }, &format!("cuptiActivityDisable({kind:?})"))?;
    }
    Ok(())
}

unsafe extern "C" fn on_callback(_: *mut c_void, domain: sys::CUpti_CallbackDomain, cbid: sys::CUpti_CallbackId, data: *const c_void) {
    if domain != sys::CUpti_CallbackDomain::CUPTI_CB_DOMAIN_DRIVER_API || data.is_null() {
        return;
    }
    let site = (*(data as *const sys::CUpti_CallbackData)).callbackSite;
    let start = sys::CUpti_driver_api_trace_cbid::CUPTI_DRIVER_TRACE_CBID_cuProfilerStart as u32;
    let stop = sys::CUpti_driver_api_trace_cbid::CUPTI_DRIVER_TRACE_CBID_cuProfilerStop as u32;
    let result = if cbid == start && site == sys::CUpti_ApiCallbackSite::CUPTI_API_EXIT {
        open_window()
    } else if cbid == stop && site == sys::CUpti_ApiCallbackSite::CUPTI_API_ENTER {
        close_window()
    } else {
        Ok(())
    };
    if let Err(e) = result {
        lumen_trace::status!("[lumen profile] process {}: {e:#}", std::process::id());
    }
}

unsafe extern "C" fn buffer_requested(buffer: *mut *mut u8, size: *mut usize, max_records: *mut usize) {
    *buffer = alloc(Layout::from_size_align_unchecked(BUFFER_BYTES, 8));
    *size = if (*buffer).is_null() { 0 } else { BUFFER_BYTES };
    *max_records = 0;
}

unsafe extern "C" fn buffer_completed(_: cudarc::driver::sys::CUcontext, _: u32, buffer: *mut u8, size: usize, valid: usize) {
    if let Some(mut s) = state() {
        let pid = s.pid;
        let mut record: *mut sys::CUpti_Activity = std::ptr::null_mut();
        while sys::cuptiActivityGetNextRecord(buffer, valid, &mut record) == sys::CUptiResult::CUPTI_SUCCESS {
            let record = record as *const u32;
            if let Some(start) = graph_launch_start(record) {
                if !s.window_times.iter().any(|&(open, close)| open <= start && start <= close) {
                    continue;
                }
            }
            s.rows.push(record, pid);
        }
    }
    if !buffer.is_null() && size > 0 {
        dealloc(buffer, Layout::from_size_align_unchecked(size, 8));
    }
}

/// A thread's name from `/proc`, while it lives.
fn thread_name(tid: u64) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).map(|n| n.trim().to_string()).unwrap_or_else(|_| format!("thread {tid}"))
}

/// Appends the rows decoded so far; with `last`, also closes the trace as complete.
fn write_rows(last: bool) {
    let Some(mut s) = state() else { return };
    let rows = s.rows.take();
    s.devices.extend(rows.gpu_ops.iter().map(|op| op.device));
    let process: Vec<ProcessRow> = s.process.take().into_iter().collect();
    let tids = rows.api_calls.iter().map(|a| a.tid).chain(rows.spans.iter().map(|r| r.tid)).chain(rows.marks.iter().map(|m| m.tid));
    let threads: Vec<(u64, String)> =
        tids.collect::<HashSet<u64>>().into_iter().filter(|tid| s.named_threads.insert(*tid)).map(|tid| (tid, thread_name(tid))).collect();
    let Some(writer) = s.writer.as_mut() else { return };
    let written = writer.append(&Batch { threads: &threads, spans: &rows.spans, marks: &rows.marks, ..Batch::default() }).and_then(|_| {
        writer.append_gpu(&GpuBatch { processes: &process, gpu_ops: &rows.gpu_ops, api_calls: &rows.api_calls, threads: &[] })
    });
    if let Err(e) = written {
        lumen_trace::status!("[lumen profile] process {}: {e:#}; collection stops", s.pid);
        s.writer = None;
        return;
    }
    if last {
        let mut meta = vec![("capture_windows", s.windows.to_string())];
        if s.options.capture == Capture::ProfilerApi {
            meta.push(("capture_window_times", window_times_meta(&s.window_times)));
        }
        if !s.devices.is_empty() {
            meta.push(("gpu", s.devices.iter().map(|&d| device_label(d)).collect::<Vec<_>>().join(", ")));
        }
        if let Some(mut w) = s.writer.take() {
            let written = meta.iter().try_for_each(|(key, value)| w.set_meta(key, value)).and_then(|_| w.finish().map(|_| ()));
            if let Err(e) = written {
                lumen_trace::status!("[lumen profile] process {}: {e:#}", s.pid);
            }
        }
    }
}

/// Capture windows as `open-close,open-close` in host ns; a window still open at exit closes now.
fn window_times_meta(windows: &[(u64, u64)]) -> String {
    let now = lumen_trace::now_ns();
    windows.iter().map(|&(open, close)| format!("{open}-{}", close.min(now))).collect::<Vec<_>>().join(",")
}

/// `NAME (cuda:N)`, as lumen's recorder names the GPU it ran on; the ordinal alone when the
/// driver cannot name it.
fn device_label(ordinal: u32) -> String {
    use cudarc::driver::sys as driver;
    let mut name = [0 as std::ffi::c_char; 256];
    let mut device: driver::CUdevice = 0;
    let named = unsafe {
        driver::cuDeviceGet(&mut device, ordinal as c_int) == driver::CUresult::CUDA_SUCCESS
            && driver::cuDeviceGetName(name.as_mut_ptr(), name.len() as c_int, device) == driver::CUresult::CUDA_SUCCESS
    };
    if named {
        format!("{} (cuda:{ordinal})", unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy())
    } else {
        format!("cuda:{ordinal}")
    }
}

extern "C" fn at_exit() {
    unsafe { sys::cuptiActivityFlushAll(FLUSH_FORCED) };
    write_rows(true);
}
