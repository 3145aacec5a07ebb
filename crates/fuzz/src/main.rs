//! lumen's parser fuzzer, coverage-guided on stable Rust: mutates inputs for one parser at a time
//! (GGUF, safetensors header, dataset lines, engine config in YAML and JSON, Kineto JSON, the
//! `.lumen` reader), starting from the seed inputs in `crates/fuzz/corpus/<target>/`. A parser may
//! refuse an input with an error; a panic is a crash: the input is saved under
//! `target/fuzz-crashes/` and the run fails.
//!
//! Mutations: bit flips, interesting bytes, numbers and separators, extreme 64-bit integers over
//! sizes and offsets, rewritten decimal numbers, insertions, deletions, duplications, truncations
//! and splices between corpus inputs. Built with SanitizerCoverage's inline 8-bit counters (as
//! `scripts/fuzz.sh` builds it; see [`coverage`]), every run's edges and hit counts are compared with
//! everything seen so far, and an input that shows a new one joins the corpus (and is written to
//! `target/fuzz-corpus/<target>/`), so that later mutations build on it. Inputs are picked in
//! proportion to the edges their run reached, with inputs the parser accepted and recent additions
//! picked more often. Built without the counters (a plain `cargo run -p lumen-fuzz`), it says so and
//! mutates the seeds only; so does `--unguided`, which still measures coverage, for comparison.
//!
//! `lumen-fuzz [--unguided] TARGET|all SECONDS [SEED]`, as `scripts/fuzz.sh` runs it. The same SEED
//! replays the same mutations; a guided run may still part from an earlier one where the parsers'
//! own hash seeds or the time budget differ.

mod coverage;

use anyhow::{bail, Context, Result};
use coverage::Coverage;
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

/// Reads a dataset whose `prompt` lines are "tokenized" to their bytes, so that path is fuzzed too.
fn dataset(path: &Path, _: &Path) -> Result<()> {
    let bytes = |text: &str| -> Result<Vec<u32>> { Ok(text.bytes().map(u32::from).collect()) };
    lumen_bench::dataset::read_dataset(path, Some(512), Some(&bytes)).map(|_| ())
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

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, pool: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(9) {
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
            7 if len > 0 => {
                // Rewrite the decimal digits at or after a random place: ids, sizes and counts in
                // the text formats.
                let start = rng.below(len);
                if let Some(skip) = input[start..].iter().position(u8::is_ascii_digit) {
                    let from = start + skip;
                    let end = from + input[from..].iter().take_while(|b| b.is_ascii_digit()).count();
                    let n = std::str::from_utf8(&input[from..end]).ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(u64::MAX);
                    let value = match rng.below(5) {
                        0 => n.wrapping_add(1),
                        1 => n.wrapping_sub(1),
                        2 => n / 2,
                        3 => n.wrapping_mul(2),
                        _ => rng.below(17) as u64,
                    };
                    input.splice(from..end, value.to_string().into_bytes());
                }
            }
            _ => {
                let other = &pool[rng.below(pool.len())];
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
    /// Edges reached and features (edge and hit-count bucket) seen, 0 without instrumentation.
    edges: usize,
    features: usize,
    /// Inputs in the corpus at the end: the seeds and those that showed a new feature.
    corpus: usize,
}

/// How one input went.
enum Run {
    Accepted,
    Refused,
    Crashed,
}

/// One target's inputs, its scratch file and its coverage.
struct Harness<'a> {
    name: &'a str,
    target: Target,
    path: PathBuf,
    dir: PathBuf,
    coverage: &'a mut Coverage,
    out: Outcome,
    seed: u64,
}

impl Harness<'_> {
    /// Runs the target on `input`; the counters then hold its edges.
    fn run(&mut self, input: &[u8]) -> Result<Run> {
        std::fs::write(&self.path, input)?;
        let (target, path, dir) = (self.target, &self.path, &self.dir);
        self.coverage.clear();
        let one = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| target(path, dir)));
        self.coverage.take();
        self.out.slowest = self.out.slowest.max(one.elapsed());
        self.out.runs += 1;
        Ok(match result {
            Ok(Ok(())) => Run::Accepted,
            Ok(Err(_)) => {
                self.out.refused += 1;
                Run::Refused
            }
            Err(_) => {
                self.out.crashes += 1;
                if self.out.saved.len() < SAVED_CRASHES {
                    let crashes_dir = target_dir().join("fuzz-crashes");
                    std::fs::create_dir_all(&crashes_dir)?;
                    let saved = crashes_dir.join(format!("{}-{}-{}.bin", self.name, self.seed, self.out.runs));
                    std::fs::write(&saved, input)?;
                    self.out.saved.push(saved);
                }
                Run::Crashed
            }
        })
    }
}

/// The workspace's `target/`.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target")
}

/// FNV-1a, to name a saved corpus input by its content.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// The inputs mutated: the seeds and those that showed a new feature, each weighted by the edges
/// its run reached, and [`ACCEPTED_WEIGHT`] times more if the parser accepted it, so that inputs
/// that get past the parser's checks are mutated more often than the many that it refuses early.
struct Corpus {
    inputs: Vec<Vec<u8>>,
    /// Running sums of the weights.
    ends: Vec<u64>,
}

impl Corpus {
    fn push(&mut self, input: Vec<u8>, depth: usize, accepted: bool) {
        let weight = (depth as u64 + 1) * if accepted { ACCEPTED_WEIGHT } else { 1 };
        self.inputs.push(input);
        self.ends.push(self.ends.last().copied().unwrap_or(0) + weight);
    }

    fn pick(&self, rng: &mut Rng) -> usize {
        let at = rng.next() % self.ends.last().copied().unwrap_or(1);
        self.ends.partition_point(|&end| end <= at)
    }
}

/// How much more often an input the parser accepted is mutated than one it refused.
const ACCEPTED_WEIGHT: u64 = 64;

/// Recently added inputs, one of which is mutated every fourth run: a new input is the likeliest
/// to lead further.
const RECENT: usize = 8;

fn fuzz(name: &str, file: &str, target: Target, budget: Duration, seed: u64, guided: bool, coverage: &mut Coverage) -> Result<Outcome> {
    let seeds_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(name);
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(&seeds_dir).with_context(|| format!("no corpus {}", seeds_dir.display()))? {
        paths.push(entry?.path());
    }
    paths.sort();
    let seeds = paths.iter().map(std::fs::read).collect::<std::io::Result<Vec<_>>>()?;
    if seeds.is_empty() {
        bail!("corpus {} is empty", seeds_dir.display());
    }
    let max_len = seeds.iter().map(Vec::len).max().unwrap_or(0).max(2048) * 2;
    // The input is written to a file for every run: in memory where there is /dev/shm, since a
    // disk file truncated thousands of times a second makes the run wait on the disk.
    let shm = Path::new("/dev/shm");
    let scratch = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    let dir = scratch.join(format!("lumen-fuzz-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // Inputs that showed new coverage are kept here too, to look at or to take into the seeds.
    let kept_dir = target_dir().join("fuzz-corpus").join(name);
    let guided = guided && coverage.instrumented();
    if guided {
        let _ = std::fs::remove_dir_all(&kept_dir);
        std::fs::create_dir_all(&kept_dir)?;
    }
    coverage.forget();
    let mut h = Harness {
        name,
        target,
        path: dir.join(file),
        dir: dir.clone(),
        coverage,
        out: Outcome { runs: 0, refused: 0, crashes: 0, saved: Vec::new(), slowest: Duration::ZERO, edges: 0, features: 0, corpus: 0 },
        seed,
    };
    let mut rng = Rng(seed ^ lumen_backend::rng::splitmix64(name.len() as u64 * 7919));
    let started = Instant::now();
    // The seeds first, so that only what they do not reach counts as new.
    let mut corpus = Corpus { inputs: Vec::new(), ends: Vec::new() };
    for input in seeds {
        let run = h.run(&input)?;
        if !matches!(run, Run::Crashed) {
            h.coverage.merge();
        }
        corpus.push(input, h.coverage.depth(), matches!(run, Run::Accepted));
    }
    let seeds = corpus.inputs.len();
    while started.elapsed() < budget {
        let added = corpus.inputs.len() - seeds;
        let parent =
            if added > 0 && rng.below(4) == 0 { corpus.inputs.len() - 1 - rng.below(RECENT.min(added)) } else { corpus.pick(&mut rng) };
        let mut input = corpus.inputs[parent].clone();
        mutate(&mut rng, &mut input, &corpus.inputs);
        input.truncate(max_len);
        let run = h.run(&input)?;
        if matches!(run, Run::Crashed) || !h.coverage.merge() || !guided {
            continue;
        }
        std::fs::write(kept_dir.join(format!("{:016x}", fnv1a(&input))), &input)?;
        corpus.push(input, h.coverage.depth(), matches!(run, Run::Accepted));
    }
    let _ = std::fs::remove_dir_all(&dir);
    h.out.edges = h.coverage.reached();
    h.out.features = h.coverage.features();
    h.out.corpus = corpus.inputs.len();
    Ok(h.out)
}

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let unguided = args.iter().any(|a| a == "--unguided");
    args.retain(|a| a != "--unguided");
    let (Some(which), Some(seconds)) = (args.first(), args.get(1)) else {
        bail!("usage: lumen-fuzz [--unguided] TARGET|all SECONDS [SEED]; targets: {}", TARGETS.map(|t| t.0).join(", "));
    };
    let budget = Duration::from_secs_f64(seconds.parse().with_context(|| format!("SECONDS {seconds:?} is not a number"))?);
    let seed: u64 = args.get(2).map_or(Ok(1), |s| s.parse()).context("SEED is not an integer")?;
    let chosen: Vec<_> = TARGETS.iter().filter(|t| which == "all" || t.0 == which).collect();
    if chosen.is_empty() {
        bail!("unknown target {which:?}; expected all or one of {}", TARGETS.map(|t| t.0).join(", "));
    }
    let mut coverage = Coverage::new();
    if !coverage.instrumented() {
        println!("built without coverage instrumentation; mutating seeds only (scripts/fuzz.sh builds with it)");
    } else if unguided {
        println!("{} edges instrumented; unguided: mutating seeds only, coverage measured", coverage.edges());
    } else {
        println!("{} edges instrumented; coverage-guided", coverage.edges());
    }
    // A crash prints one line (its message and place), and the run goes on.
    std::panic::set_hook(Box::new(|info| eprintln!("crash: {info}")));
    let mut crashed = 0;
    println!(
        "{:<12} {:>9} {:>9} {:>8} {:>11} {:>6} {:>8} {:>7}",
        "target", "runs", "refused", "crashes", "slowest ms", "edges", "features", "corpus"
    );
    for (name, file, target) in chosen {
        let o = fuzz(name, file, *target, budget, seed, !unguided, &mut coverage)?;
        println!(
            "{:<12} {:>9} {:>9} {:>8} {:>11.1} {:>6} {:>8} {:>7}",
            name,
            o.runs,
            o.refused,
            o.crashes,
            o.slowest.as_secs_f64() * 1e3,
            o.edges,
            o.features,
            o.corpus
        );
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
