//! lumen-trace: the trace model and store, and the instrumentation API.
//!
//! Every timestamp lumen records is nanoseconds on one monotonic clock ([`now_ns`]), so engine
//! timings and trace rows line up. [`instrument`] is the API the engine calls, [`window`] decides
//! which iterations are recorded, [`model`] holds a trace's rows in memory and [`export`] turns
//! them into Perfetto and Chrome traces.

pub mod alloc;
pub mod export;
pub mod instrument;
pub mod model;
mod nvtx_sink;
pub mod store;
pub mod window;

use std::sync::OnceLock;
use std::time::Instant;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the process's trace epoch (the first call to any clock function).
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
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
