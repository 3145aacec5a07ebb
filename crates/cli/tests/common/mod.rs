//! Helpers shared by the `lumen` end-to-end tests: running the built binary, scratch
//! directories, and reading the JSON-lines files the binary writes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub mod server;

pub use lumen_test_support::scratch::Scratch;

/// The binary under test: `$LUMEN_BIN` when set (test binaries copied to the GPU machine),
/// else the one cargo built.
pub fn lumen_bin() -> String {
    std::env::var("LUMEN_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_lumen").to_string())
}

/// File name of the default model that `scripts/setup.sh` fetches.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The real model in the workspace checkout.
pub fn real_model() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models").join(DEFAULT_MODEL_FILE);
    assert!(path.exists(), "{} is missing; run scripts/setup.sh to fetch it", path.display());
    path
}

/// What one run of the binary produced.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics with the full output unless the run exited with status 0.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "lumen failed\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    /// The lines of stderr that start with `error:` (what the user is told went wrong).
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| l.starts_with("error:")).collect()
    }

    /// Asserts a clean failure: exit status `code`, no panic, exactly one `error:` line, which
    /// contains every one of `needles`. Returns that line.
    pub fn fails_with(&self, code: i32, needles: &[&str]) -> String {
        let context = format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        assert_eq!(self.code, Some(code), "unexpected exit status\n{context}");
        assert!(!self.stderr.contains("panicked"), "lumen panicked\n{context}");
        assert!(!self.stderr.contains("RUST_BACKTRACE"), "lumen panicked\n{context}");
        let errors = self.error_lines();
        assert_eq!(errors.len(), 1, "expected exactly one `error:` line on stderr\n{context}");
        let line = errors[0];
        for needle in needles {
            assert!(line.contains(needle), "the error line does not mention {needle:?}: {line}\n{context}");
        }
        line.to_string()
    }
}

/// Runs `lumen args...` with `LUMEN_MODEL` unset (so the default model is the checkout's)
/// and the given extra environment variables.
pub fn lumen_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(lumen_bin());
    cmd.args(args).env_remove("LUMEN_MODEL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("cannot start the lumen binary");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

pub fn lumen(args: &[&str]) -> Run {
    lumen_env(args, &[])
}

/// Whether a CUDA device can be opened; says why the caller skips when not, and fails the test
/// instead under `LUMEN_REQUIRE_GPU=1`.
pub fn gpu_present() -> bool {
    lumen_test_support::gpu::device_or_skip(lumen_backend::cuda::Gpu::open(0)).is_some()
}

/// Prepares `data.jsonl` in `s`: `requests` requests of exactly `isl` prompt and `osl` output
/// tokens for `model`; returns its path.
pub fn fixed_length_dataset(s: &Scratch, model: &str, requests: &str, isl: &str, osl: &str) -> String {
    let out = s.path("data.jsonl");
    lumen(&[
        "bench",
        "prepare-dataset",
        "--model",
        model,
        "--output",
        &out,
        "token-norm-dist",
        "--num-requests",
        requests,
        "--input-mean",
        isl,
        "--input-stdev",
        "0",
        "--output-mean",
        osl,
        "--output-stdev",
        "0",
    ])
    .ok();
    out
}

/// One dataset line as `prepare-dataset` writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub task_id: u64,
    pub input_ids: Vec<u64>,
    pub output_tokens: u64,
}

/// Parses a JSON-lines file into one `serde_json::Value` per non-empty line.
pub fn json_lines(path: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{path}:{}: not JSON ({e}): {l}", i + 1)))
        .collect()
}

/// Reads a dataset and checks every line has exactly the three dataset fields.
pub fn read_entries(path: &str) -> Vec<Entry> {
    json_lines(path)
        .into_iter()
        .map(|v| {
            let obj = v.as_object().unwrap_or_else(|| panic!("dataset line is not an object: {v}"));
            let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["input_ids", "output_tokens", "task_id"], "unexpected dataset fields: {v}");
            Entry {
                task_id: v["task_id"].as_u64().expect("task_id is an integer"),
                input_ids: v["input_ids"]
                    .as_array()
                    .expect("input_ids is an array")
                    .iter()
                    .map(|x| x.as_u64().expect("token ids are integers"))
                    .collect(),
                output_tokens: v["output_tokens"].as_u64().expect("output_tokens is an integer"),
            }
        })
        .collect()
}
