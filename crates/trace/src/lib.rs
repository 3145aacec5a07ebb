//! lumen-trace: the trace model and store, and the instrumentation API.
//!
//! Every timestamp lumen records is nanoseconds on the host's monotonic clock ([`now_ns`]), so
//! engine timings, trace rows of several processes and GPU activity line up. [`instrument`] is the API the engine calls, [`window`] decides
//! which iterations are recorded, [`model`] holds a trace's rows in memory, [`store`] keeps them in
//! a `.lumen` file, [`merge`] joins the files of several processes, [`correlate`] joins GPU work to its launch
//! calls, [`export`] turns a trace into Perfetto and Chrome traces, and [`kineto`] imports a
//! torch.profiler trace.

pub mod alloc;
pub mod correlate;
pub mod export;
pub mod instrument;
pub mod kineto;
pub mod merge;
pub mod model;
mod nvtx_sink;
pub mod store;
pub mod window;

/// Nanoseconds on the host's monotonic clock (`CLOCK_MONOTONIC`): the same clock in every
/// process, and the one the CUPTI collector stamps GPU activity with, so the rows of several
/// processes and of the GPU line up in one trace.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn clock_is_monotonic() {
        let a = super::now_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::now_ns();
        assert!(b >= a + 2_000_000, "clock advanced {} ns over a 2 ms sleep", b - a);
    }
}
