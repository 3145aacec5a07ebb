//! Measures the CPU matmul kernel on SmolLM2-135M's projection shapes at decode and prefill batch
//! sizes: `cargo run --release -p lumen-backend --example matmul_speed`.

use lumen_backend::cpu::{matmul, PackedMatrix};
use std::time::Instant;

fn main() {
    let threads = rayon::current_num_threads();
    println!("matmul on {threads} threads ({})", std::env::consts::ARCH);
    println!("{:>6} {:>6} {:>6} {:>10} {:>10}", "t", "k", "n", "ms", "GFLOP/s");
    for (t, k, n) in [(1, 576, 960), (64, 576, 960), (64, 576, 3072), (64, 1536, 576), (512, 576, 3072), (2048, 576, 960)] {
        let x: Vec<f32> = (0..t * k).map(|i| (i % 17) as f32 * 0.01).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let w = PackedMatrix::pack(&w, n, k);
        let mut out = vec![0.0f32; t * n];
        matmul(&x, t, &w, &mut out);
        let reps = (2e9 / (2.0 * (t * k * n) as f64)).clamp(3.0, 2000.0) as usize;
        let start = Instant::now();
        for _ in 0..reps {
            matmul(&x, t, &w, &mut out);
        }
        let secs = start.elapsed().as_secs_f64() / reps as f64;
        println!("{t:>6} {k:>6} {n:>6} {:>10.3} {:>10.1}", secs * 1e3, 2.0 * (t * k * n) as f64 / secs / 1e9);
    }
}
