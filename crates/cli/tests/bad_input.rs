//! End-to-end tests of how `lumen` refuses bad input: malformed or invalid datasets, bad
//! counts, missing, truncated or foreign model files, unknown presets and unknown flags. Each
//! must exit non-zero with exactly one `error:` line on stderr that names the offending file,
//! line or value, and must never panic.

mod common;

use common::{lumen, lumen_env, real_model, Run, Scratch, DEFAULT_MODEL_FILE};

const GOOD_LINE: &str = r#"{"task_id":0,"input_ids":[5,6,7,8],"output_tokens":3}"#;

fn throughput(dataset: &str, extra: &[&str]) -> Run {
    let mut args = vec!["bench", "throughput", "--model", "tiny", "--dataset", dataset];
    args.extend_from_slice(extra);
    lumen(&args)
}

/// `prepare-dataset token-norm-dist` with `count` giving the number of requests.
fn prepare_norm(count: &[&str]) -> Run {
    let s = Scratch::new("prep");
    let out = s.path("out.jsonl");
    let mut args = vec!["bench", "prepare-dataset", "--model", "tiny", "--output", &out, "token-norm-dist"];
    args.extend_from_slice(count);
    args.extend(["--input-mean", "20", "--output-mean", "5"]);
    let run = lumen(&args);
    assert!(!std::path::Path::new(&out).exists(), "a failed prepare-dataset left {out} behind");
    run
}

#[test]
fn malformed_dataset_line_names_file_and_line() {
    let s = Scratch::new("malformed");
    let path = s.write("bad.jsonl", format!("{GOOD_LINE}\n{GOOD_LINE}\n{{not json\n{GOOD_LINE}\n"));
    let run = throughput(&path, &[]);
    run.fails_with(1, &[&format!("{path}:3:"), "malformed JSON"]);
    assert!(run.stdout.is_empty(), "no report for a failed run: {}", run.stdout);
}

#[test]
fn dataset_entry_of_the_wrong_shape() {
    let s = Scratch::new("shape");
    let path = s.write("shape.jsonl", format!("{GOOD_LINE}\n{{\"task_id\":1,\"input_ids\":\"abc\",\"output_tokens\":3}}\n"));
    throughput(&path, &[]).fails_with(1, &[&format!("{path}:2:"), "invalid dataset entry"]);
}

#[test]
fn token_id_outside_the_vocabulary() {
    let s = Scratch::new("vocab");
    let path = s.write("vocab.jsonl", format!("{GOOD_LINE}\n{{\"task_id\":1,\"input_ids\":[1,2,600],\"output_tokens\":3}}\n"));
    throughput(&path, &[]).fails_with(1, &[&format!("{path}:2:"), "token id 600", "512"]);
}

#[test]
fn empty_dataset_file() {
    let s = Scratch::new("empty");
    let path = s.write("empty.jsonl", "");
    throughput(&path, &[]).fails_with(1, &[&path, "empty"]);
    let blank = s.write("blank.jsonl", "\n  \n\n");
    throughput(&blank, &[]).fails_with(1, &[&blank, "empty"]);
}

#[test]
fn dataset_line_with_zero_output_tokens() {
    let s = Scratch::new("zero");
    let path = s.write("zero.jsonl", format!("{GOOD_LINE}\n{{\"task_id\":1,\"input_ids\":[1,2],\"output_tokens\":0}}\n"));
    throughput(&path, &[]).fails_with(1, &[&format!("{path}:2:"), "output_tokens is 0"]);
}

#[test]
fn missing_dataset_file() {
    throughput("/nonexistent/dataset.jsonl", &[]).fails_with(1, &["/nonexistent/dataset.jsonl"]);
}

#[test]
fn dataset_request_too_long_for_the_kv_cache() {
    let s = Scratch::new("toolong");
    let path =
        s.write("long.jsonl", format!("{GOOD_LINE}\n{{\"task_id\":1,\"input_ids\":[{}],\"output_tokens\":3}}\n", ["9"; 40].join(",")));
    throughput(&path, &["--kv-cache-tokens", "32", "--kv-block-size", "4", "--warmup", "0"])
        .fails_with(1, &["task_id 1", "40 in + 3 out", "at most 32", "nothing was run"]);
}

/// prepare-dataset needs a positive count; `bench throughput --num-requests 0` is the whole
/// dataset, as in trtllm-bench.
#[test]
fn zero_num_requests() {
    prepare_norm(&["--num-requests", "0"]).fails_with(1, &["--num-requests", "0"]);
}

/// The negative value reaches lumen's own check only when written as `--num-requests=-3`.
#[test]
fn negative_num_requests_with_equals_sign() {
    prepare_norm(&["--num-requests=-3"]).fails_with(1, &["--num-requests -3", "positive"]);
    let s = Scratch::new("neg-eq");
    let path = s.write("d.jsonl", format!("{GOOD_LINE}\n"));
    throughput(&path, &["--num-requests=-3"]).fails_with(1, &["--num-requests -3", "must not be negative"]);
}

/// `--num-requests -3` (space-separated, as users type it) must be reported as a bad count,
/// not as an unknown argument. clap treats `-3` as a flag, so lumen's own check is unreachable:
/// the user sees "unexpected argument '-3' found" without the flag it belongs to.
#[test]
fn negative_num_requests_prepare_dataset() {
    prepare_norm(&["--num-requests", "-3"]).fails_with(1, &["--num-requests", "-3", "positive"]);
}

#[test]
fn negative_num_requests_throughput() {
    let s = Scratch::new("neg");
    let path = s.write("d.jsonl", format!("{GOOD_LINE}\n"));
    throughput(&path, &["--num-requests", "-3"]).fails_with(1, &["--num-requests", "-3", "must not be negative"]);
}

#[test]
fn zero_max_tokens() {
    // clap's range check: usage error, exit status 2.
    lumen(&["generate", "--model", "tiny", "--prompt-ids", "1,2,3", "--max-tokens", "0"]).fails_with(2, &["'0'", "--max-tokens"]);
}

#[test]
fn unknown_quantization() {
    lumen(&["generate", "--model", "tiny", "--prompt-ids", "1,2,3", "--quantization", "int4"])
        .fails_with(2, &["int4", "--quantization", "none or fp8"]);
}

#[test]
fn unknown_kv_cache_dtype() {
    lumen(&["generate", "--model", "tiny", "--prompt-ids", "1,2,3", "--kv-cache-dtype", "int8"])
        .fails_with(2, &["int8", "--kv-cache-dtype", "auto", "fp8"]);
}

#[test]
fn prompt_id_outside_the_vocabulary() {
    lumen(&["generate", "--model", "tiny", "--prompt-ids", "1,600"]).fails_with(1, &["600", "512"]);
}

#[test]
fn text_prompt_on_a_model_without_tokenizer() {
    lumen(&["generate", "--model", "tiny", "--prompt", "hello"]).fails_with(1, &["tiny@0", "no tokenizer", "--prompt-ids"]);
}

#[test]
fn missing_model_file() {
    lumen(&["generate", "--model", "/nonexistent/x.gguf", "--prompt", "hi"]).fails_with(1, &["/nonexistent/x.gguf", "not found"]);
}

#[test]
fn default_model_missing_points_to_setup_script() {
    let missing = format!("/nonexistent/{DEFAULT_MODEL_FILE}");
    let env = [("LUMEN_MODEL", missing.as_str())];
    lumen_env(&["generate", "--prompt", "hi"], &env).fails_with(1, &[&missing, "scripts/setup.sh"]);
    let s = Scratch::new("nomodel");
    let out = s.path("d.jsonl");
    lumen_env(
        &[
            "bench",
            "prepare-dataset",
            "--output",
            &out,
            "token-norm-dist",
            "--num-requests",
            "2",
            "--input-mean",
            "5",
            "--output-mean",
            "2",
        ],
        &env,
    )
    .fails_with(1, &[&missing, "scripts/setup.sh"]);
    let dataset = s.write("in.jsonl", format!("{GOOD_LINE}\n"));
    lumen_env(&["bench", "throughput", "--dataset", &dataset], &env).fails_with(1, &[&missing, "scripts/setup.sh"]);
}

#[test]
fn truncated_gguf() {
    use std::io::Read;
    let s = Scratch::new("trunc");
    let mut head = Vec::new();
    std::fs::File::open(real_model()).unwrap().take(1 << 20).read_to_end(&mut head).unwrap();
    assert_eq!(head.len(), 1 << 20);
    let path = s.write("truncated.gguf", &head);
    lumen(&["generate", "--model", &path, "--prompt", "hi"]).fails_with(1, &[&path, "truncated"]);
    let out = s.path("d.jsonl");
    lumen(&[
        "bench",
        "prepare-dataset",
        "--model",
        &path,
        "--output",
        &out,
        "token-norm-dist",
        "--num-requests",
        "2",
        "--input-mean",
        "5",
        "--output-mean",
        "2",
    ])
    .fails_with(1, &[&path, "truncated"]);
}

#[test]
fn wrong_magic() {
    let s = Scratch::new("magic");
    let path = s.write("model.gguf", "NOTAGGUF".repeat(1000));
    lumen(&["generate", "--model", &path, "--prompt", "hi"]).fails_with(1, &[&path, "not a GGUF file"]);
}

#[test]
fn unknown_preset_with_seed() {
    lumen(&["generate", "--model", "llama-9000@1", "--prompt-ids", "1"])
        .fails_with(1, &["unknown preset", "llama-9000", "tiny", "smollm2-135m"]);
}

#[test]
fn unknown_model_name_lists_the_presets() {
    lumen(&["generate", "--model", "llama-9000", "--prompt-ids", "1"])
        .fails_with(1, &["llama-9000", "not found", "preset", "tiny", "smollm2-135m", "llama-3.2-1b"]);
}

#[test]
fn preset_with_a_bad_seed() {
    lumen(&["generate", "--model", "tiny@x", "--prompt-ids", "1"]).fails_with(1, &["tiny@x", "seed"]);
}

#[test]
fn unknown_flag_and_subcommand_are_usage_errors() {
    let run = lumen(&["bench", "throughput", "--frobnicate"]);
    run.fails_with(2, &["--frobnicate"]);
    assert!(run.stderr.contains("Usage: lumen bench throughput"), "{}", run.stderr);
    let run = lumen(&["fly"]);
    run.fails_with(2, &["'fly'"]);
    assert!(run.stderr.contains("Usage: lumen"), "{}", run.stderr);
}

#[test]
fn real_dataset_needs_a_tokenizer() {
    let s = Scratch::new("notok");
    let prompts = s.write("p.txt", "hello\n");
    let out = s.path("d.jsonl");
    lumen(&[
        "bench",
        "prepare-dataset",
        "--model",
        "tiny",
        "--output",
        &out,
        "real-dataset",
        "--dataset-path",
        &prompts,
        "--output-len-dist",
        "5,0",
    ])
    .fails_with(1, &["tokenizer", "tiny"]);
}

#[test]
fn real_dataset_bad_output_len_dist() {
    let s = Scratch::new("lendist");
    let prompts = s.write("p.txt", "hello\n");
    let out = s.path("d.jsonl");
    lumen(&["bench", "prepare-dataset", "--output", &out, "real-dataset", "--dataset-path", &prompts, "--output-len-dist", "five"])
        .fails_with(1, &["--output-len-dist", "\"five\""]);
}

/// A KV cache larger than the address space: lumen must refuse it with an error, not let the
/// allocator abort the process ("memory allocation of N bytes failed", SIGABRT).
#[test]
fn kv_cache_larger_than_memory() {
    let s = Scratch::new("hugekv");
    let path = s.write("d.jsonl", format!("{GOOD_LINE}\n"));
    let run = throughput(&path, &["--kv-cache-gib", "1e9"]);
    let line = run.fails_with(1, &[]);
    assert!(line.to_lowercase().contains("kv cache"), "the error does not mention the KV cache: {line}");
}

/// `--kv-cache-tokens` near u64::MAX: the storage size computation overflows (a panic in the
/// dev profile); lumen must report the size as too large instead.
#[test]
fn kv_cache_tokens_overflow() {
    let s = Scratch::new("overflowkv");
    let path = s.write("d.jsonl", format!("{GOOD_LINE}\n"));
    throughput(&path, &["--kv-cache-tokens", "18446744073709551615"]).fails_with(1, &["18446744073709551615"]);
}

/// Numeric limits are checked before any work, and the error names the option and the value.
#[test]
fn impossible_thread_counts_and_negative_counts_name_their_option() {
    let generate = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", "tiny", "--prompt-ids", "1,2", "--max-tokens", "2"];
        args.extend_from_slice(extra);
        lumen(&args)
    };
    generate(&["--threads", "100000"]).fails_with(1, &["--threads 100000", "expected 1 to"]);
    let zero = generate(&["--threads", "0"]);
    assert!(zero.code == Some(2) && zero.stderr.contains("'0' for '--threads"), "{}", zero.stderr);
    let run = lumen(&["generate", "--model", "tiny", "--prompt-ids", "1,2", "--max-tokens", "-1"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("'-1' for '--max-tokens"), "the option and the value are named: {}", run.stderr);
}

#[test]
fn a_directory_given_as_a_trace_is_named_as_one() {
    let s = Scratch::new("dir-trace");
    let dir = s.path("traces");
    std::fs::create_dir(&dir).unwrap();
    lumen(&["analyze", &dir]).fails_with(1, &["is a directory"]);
    lumen(&["trace", "info", &dir]).fails_with(1, &["is a directory"]);
    lumen(&["trace", "export", &dir, "--format", "chrome", "-o", &s.path("x.json")]).fails_with(1, &["is a directory"]);
}
