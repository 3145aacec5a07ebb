//! lumen-trace: the trace model, its `.lumen` store (write, read, merge, Kineto import, Perfetto and
//! Chrome export) and the instrumentation API the engine records through, with the profiling
//! windows that pick the iterations. Every timestamp is nanoseconds on the host's monotonic clock
//! ([`now_ns`]), so the rows of several processes and of the GPU line up.

pub mod alloc;
pub mod correlate;
pub mod export;
pub mod instrument;
pub mod kineto;
pub mod merge;
pub mod model;
mod nvtx_sink;
pub mod output;
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
