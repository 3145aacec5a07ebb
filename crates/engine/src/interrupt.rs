//! Stopping on a signal. Once [`install`]ed, SIGINT, SIGTERM and SIGHUP ask the loop that runs
//! the engine (a benchmark, `lumen generate`) to stop at its next iteration boundary: it closes
//! its profiling windows, writes and finalises the trace, and returns [`Interrupted`], which the
//! command turns into the conventional exit status (128 + the signal). A second signal ends the
//! process at once with that status.

use std::sync::atomic::{AtomicI32, Ordering};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    // Only async-signal-safe work here: an atomic swap, and _exit on the second signal.
    if RECEIVED.swap(signal, Ordering::SeqCst) != 0 {
        unsafe { libc::_exit(128 + signal) };
    }
}

/// The signals that ask lumen to stop.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Routes the [`STOP_SIGNALS`] to the stop request.
pub fn install() {
    for signal in STOP_SIGNALS {
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

/// The signal that asked the loop to stop, once one has.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// `Err(Interrupted)` once a signal asked the loop to stop.
pub fn check() -> Result<(), Interrupted> {
    received().map_or(Ok(()), |signal| Err(Interrupted { signal }))
}

/// A loop stopped by a signal, after finishing what it owed (the trace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted {
    pub signal: i32,
}

impl Interrupted {
    /// The exit status a shell gives a process ended by this signal.
    pub fn exit_status(&self) -> i32 {
        128 + self.signal
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let name = match self.signal {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            libc::SIGHUP => "SIGHUP",
            _ => "a signal",
        };
        write!(f, "stopped by {name} at an iteration boundary")
    }
}

impl std::error::Error for Interrupted {}
