//! The host's bookkeeping in a decode step of N running requests, without the forward pass:
//! scheduling, the model inputs, the launch's per-sequence updates and the finish's look-ups
//! (what the engine does around every step, and what the overlap scheduler hides behind the
//! device). Prints the median of each part over 20 steps for N = 256, 1,024 and 4,096, with the
//! machine.
//!
//! `cargo run --release -p lumen-engine --example host_step_cost`

use lumen_engine::config::EngineConfig;
use lumen_engine::kv_cache::KvCacheManager;
use lumen_engine::runner::prepare;
use lumen_engine::scheduler::{Scheduler, Sequence};
use lumen_engine::{SamplingParams, StopConditions};
use std::time::Instant;

const PROMPT: usize = 128;
const STEPS: usize = 20;

fn running(n: usize) -> (Scheduler, KvCacheManager, EngineConfig) {
    let config = EngineConfig { max_batch_size: n, max_num_tokens: n * PROMPT, block_size: 16, ..EngineConfig::default() };
    let mut kv = KvCacheManager::new(n * (PROMPT + 4 * STEPS).div_ceil(16), 16);
    let mut scheduler = Scheduler::default();
    for id in 0..n as u64 {
        scheduler.waiting.push_back(Sequence {
            id,
            tokens: (0..PROMPT as u32).collect(),
            prompt_len: PROMPT,
            num_computed: 0,
            block_table: Vec::new(),
            sampling: SamplingParams::default(),
            stop: StopConditions { max_tokens: 4 * STEPS, stop_ids: Vec::new(), ignore_eos: true },
            events: std::sync::mpsc::channel().0,
            timings: Default::default(),
            length_reached: false,
        });
    }
    // The prefill: every request admitted, its prompt computed and a first token drawn.
    let decision = scheduler.schedule(&config, &mut kv);
    assert_eq!(decision.seqs.len(), n, "every request is admitted");
    for r in &mut scheduler.running {
        r.num_computed = PROMPT;
        r.tokens.push(1);
    }
    (scheduler, kv, config)
}

fn median_us(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())))
        .unwrap_or_else(|| "unknown CPU".into());
    println!("host bookkeeping of one decode step, median of {STEPS} steps; {cpu}");
    println!("{:>6} {:>12} {:>12} {:>12} {:>12} {:>12}", "N", "schedule µs", "inputs µs", "launch µs", "finish µs", "total µs");
    for n in [256, 1024, 4096] {
        let (mut s, mut kv, config) = running(n);
        let mut parts: [Vec<f64>; 4] = Default::default();
        for step in 0..STEPS {
            let t0 = Instant::now();
            let decision = s.schedule(&config, &mut kv);
            let t1 = Instant::now();
            let input = prepare(&decision, &s, &kv);
            let t2 = Instant::now();
            for (d, i) in decision.seqs.iter().zip(s.running_indices(&decision)) {
                let seq = &mut s.running[i];
                seq.num_computed += d.num_tokens;
                seq.tokens.push(lumen_backend::SAMPLED_TOKEN);
            }
            let t3 = Instant::now();
            let places = s.locate();
            for d in &decision.seqs {
                let seq = s.at_mut(places[&d.id]);
                *seq.tokens.last_mut().expect("a token was drawn") = step as u32;
            }
            let t4 = Instant::now();
            assert_eq!(input.tokens.len(), n);
            for (part, (a, b)) in parts.iter_mut().zip([(t0, t1), (t1, t2), (t2, t3), (t3, t4)]) {
                part.push((b - a).as_secs_f64() * 1e6);
            }
        }
        let m: Vec<f64> = parts.into_iter().map(median_us).collect();
        println!("{n:>6} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>12.1}", m[0], m[1], m[2], m[3], m.iter().sum::<f64>());
    }
}
