//! lumen's parser fuzzer: mutates the seed inputs in `crates/fuzz/corpus/<target>/` and feeds
//! each mutant to one parser (GGUF, safetensors header, dataset lines, engine config in YAML and
//! JSON, Kineto JSON, the `.lumen` reader), on stable Rust. A parser may refuse an input with an
//! error; a panic is a crash: the input is saved under `target/fuzz-crashes/` and the run fails.
//! Mutation-based, not coverage-guided: byte flips, interesting bytes and numbers, insertions,
//! deletions, duplications, truncations and splices between seeds.
//!
//! `lumen-fuzz TARGET|all SECONDS [SEED]`, as `scripts/fuzz.sh` runs it.

use anyhow::{bail, Context, Result};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Crashing inputs saved per target; later ones are only counted.
const SAVED_CRASHES: usize = 20;

/// A parser under test: it reads the input from `path` (inside `dir`, a scratch directory).
type Target = fn(path: &Path, dir: &Path) -> Result<()>;

const TARGETS: [(&str, &str, Target); 7] = [
    ("gguf", "model.gguf", gguf),
    ("safetensors", "model.safetensors", safetensors),
    ("dataset", "data.jsonl", dataset),
    ("config-yaml", "engine.yaml", config),
    ("config-json", "engine.json", config),
    ("kineto", "trace.json", kineto),
    ("lumen", "trace.lumen", lumen_trace_file),
];

fn gguf(path: &Path, _: &Path) -> Result<()> {
    let g = lumen_model::gguf::GgufFile::open(path)?;
    for t in &g.tensors {
        g.dequantize(t)?;
    }
    Ok(())
}

fn safetensors(_: &Path, dir: &Path) -> Result<()> {
    lumen_model::safetensors::SafetensorsDir::open(dir).map(|_| ())
}

fn dataset(path: &Path, _: &Path) -> Result<()> {
    lumen_bench::dataset::read_dataset(path, Some(512)).map(|_| ())
}

fn config(path: &Path, _: &Path) -> Result<()> {
    let file = lumen_engine::config::EngineConfigFile::load(path)?;
    file.check()
}

fn kineto(path: &Path, dir: &Path) -> Result<()> {
    let out = dir.join("imported.lumen");
    let _ = std::fs::remove_file(&out);
    lumen_trace::kineto::import_kineto(path, &out).map(|_| ())
}

fn lumen_trace_file(path: &Path, _: &Path) -> Result<()> {
    lumen_trace::store::read_trace(path).map(|_| ())
}

/// splitmix64 as a stream: the mutations of a seed replay exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        lumen_backend::rng::splitmix64(self.0)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Texts that parsers get wrong: signs, extremes, non-numbers, separators.
const WORDS: [&[u8]; 14] = [
    b"-1",
    b"0",
    b"1e300",
    b"-1e300",
    b"NaN",
    b"inf",
    b"18446744073709551616",
    b"9223372036854775807",
    b"\"",
    b"{",
    b"]",
    b",",
    b"null",
    b"\xff\xfe",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let at = rng.below(len);
                input[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                input[at] = [0, 0xff, 0x7f, 0x80, b'9', b'-'][rng.below(6)];
            }
            2 => {
                let word = WORDS[rng.below(WORDS.len())];
                let at = rng.below(len + 1);
                input.splice(at..at, word.iter().copied());
            }
            3 if len > 1 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(64)).min(len);
                input.drain(at..end);
            }
            4 if len > 1 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(64)).min(len);
                let chunk: Vec<u8> = input[at..end].to_vec();
                let to = rng.below(len + 1);
                input.splice(to..to, chunk);
            }
            5 if len > 0 => input.truncate(rng.below(len)),
            6 if len >= 8 => {
                // Overwrite eight bytes with an extreme little-endian integer (sizes, counts, offsets).
                let at = rng.below(len - 7);
                let value = [u64::MAX, 1 << 63, (1 << 63) - 1, 1 << 40, 0][rng.below(5)];
                input[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
            _ => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let at = rng.below(len + 1);
                    input.splice(at..at, other[from..(from + 1 + rng.below(128)).min(other.len())].iter().copied());
                }
            }
        }
    }
}

/// What one target's run did.
struct Outcome {
    runs: u64,
    refused: u64,
    crashes: u64,
    /// The first crashing inputs, saved.
    saved: Vec<PathBuf>,
    slowest: Duration,
}

fn fuzz(name: &str, file: &str, target: Target, budget: Duration, seed: u64) -> Result<Outcome> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(name);
    let mut seeds = Vec::new();
    for entry in std::fs::read_dir(&corpus).with_context(|| format!("no corpus {}", corpus.display()))? {
        seeds.push(std::fs::read(entry?.path())?);
    }
    if seeds.is_empty() {
        bail!("corpus {} is empty", corpus.display());
    }
    let dir = std::env::temp_dir().join(format!("lumen-fuzz-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(file);
    let crashes_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-crashes");
    let mut rng = Rng(seed ^ lumen_backend::rng::splitmix64(name.len() as u64 * 7919));
    let mut out = Outcome { runs: 0, refused: 0, crashes: 0, saved: Vec::new(), slowest: Duration::ZERO };
    let started = Instant::now();
    while started.elapsed() < budget {
        let mut input = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &mut input, &seeds);
        std::fs::write(&path, &input)?;
        let one = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| target(&path, &dir)));
        out.slowest = out.slowest.max(one.elapsed());
        out.runs += 1;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(_)) => out.refused += 1,
            Err(_) => {
                out.crashes += 1;
                if out.saved.len() < SAVED_CRASHES {
                    std::fs::create_dir_all(&crashes_dir)?;
                    let saved = crashes_dir.join(format!("{name}-{}-{}.bin", seed, out.runs));
                    std::fs::write(&saved, &input)?;
                    out.saved.push(saved);
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(which), Some(seconds)) = (args.first(), args.get(1)) else {
        bail!("usage: lumen-fuzz TARGET|all SECONDS [SEED]; targets: {}", TARGETS.map(|t| t.0).join(", "));
    };
    let budget = Duration::from_secs_f64(seconds.parse().with_context(|| format!("SECONDS {seconds:?} is not a number"))?);
    let seed: u64 = args.get(2).map_or(Ok(1), |s| s.parse()).context("SEED is not an integer")?;
    let chosen: Vec<_> = TARGETS.iter().filter(|t| which == "all" || t.0 == which).collect();
    if chosen.is_empty() {
        bail!("unknown target {which:?}; expected all or one of {}", TARGETS.map(|t| t.0).join(", "));
    }
    // A crash prints one line (its message and place), and the run goes on.
    std::panic::set_hook(Box::new(|info| eprintln!("crash: {info}")));
    let mut crashed = 0;
    println!("{:<12} {:>9} {:>9} {:>8} {:>12}", "target", "runs", "refused", "crashes", "slowest ms");
    for (name, file, target) in chosen {
        let o = fuzz(name, file, *target, budget, seed)?;
        println!("{:<12} {:>9} {:>9} {:>8} {:>12.1}", name, o.runs, o.refused, o.crashes, o.slowest.as_secs_f64() * 1e3);
        for c in &o.saved {
            println!("  crash input saved: {}", c.display());
        }
        crashed += o.crashes;
    }
    if crashed > 0 {
        bail!("{crashed} crashes");
    }
    Ok(())
}
