//! What one instrumentation call costs, off and recording:
//! `cargo run --release -p lumen-trace --example span_cost`.
//! Multiplied by the calls an iteration makes, it bounds profiling's overhead far below what
//! whole-run throughput comparisons can resolve.

use lumen_trace::instrument::{self, counter, mark, span, span_named, Category};
use std::hint::black_box;
use std::time::Instant;

fn per_call(n: u64, f: impl Fn(u64)) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        f(black_box(i));
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let n = 20_000_000;
    instrument::configure(true, true, false, false);
    instrument::stop_recording();
    let off_span = per_call(n, |_| drop(span(Category::Phase, "phase")));
    let off_named = per_call(n, |i| drop(span_named(Category::Debug, || format!("layer {i}"))));
    let off_mark = per_call(n, |_| mark(Category::Api, "first token", || None));
    let off_counter = per_call(n, |i| counter("kv_used_blocks", || i as f64));
    instrument::start_recording();
    let m = 1_000_000;
    let on_span = per_call(m, |_| drop(span(Category::Phase, "phase")));
    instrument::drain();
    let on_named = per_call(m, |i| drop(span_named(Category::Debug, || format!("layer {i}"))));
    instrument::stop_recording();
    instrument::drain();
    println!("{:<40} {:>10}", "call", "ns/call");
    for (label, v) in [
        ("span, all sinks off", off_span),
        ("span with formatted name, off", off_named),
        ("mark, off", off_mark),
        ("counter, off", off_counter),
        ("span, recording", on_span),
        ("span with formatted name, recording", on_named),
    ] {
        println!("{label:<40} {v:>10.2}");
    }
}
