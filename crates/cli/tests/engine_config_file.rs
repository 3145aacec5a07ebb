//! End-to-end tests of the engine config file (`--config`, TensorRT-LLM's extra_llm_api_options
//! keys): an unknown key is refused with the key and the file named, and a valid YAML file sets
//! the engine limits that `bench throughput` reports and keeps to, with flags winning over it.

mod common;

use common::{json_lines, lumen, Run, Scratch};
use serde_json::Value;

/// A tiny-preset dataset of 8 short requests, returned with its path.
fn tiny_dataset(s: &Scratch) -> String {
    let path = s.path("tiny.jsonl");
    lumen(&[
        "bench",
        "prepare-dataset",
        "--model",
        "tiny",
        "--output",
        &path,
        "token-norm-dist",
        "--num-requests",
        "8",
        "--input-mean",
        "20",
        "--input-stdev",
        "4",
        "--output-mean",
        "6",
        "--output-stdev",
        "2",
    ])
    .ok();
    path
}

/// `lumen bench throughput --model tiny --dataset DATASET --config CONFIG extra...`.
fn throughput(dataset: &str, config: &str, extra: &[&str]) -> Run {
    let mut args = vec!["bench", "throughput", "--model", "tiny", "--dataset", dataset, "--config", config];
    args.extend_from_slice(extra);
    lumen(&args)
}

/// The value printed after `label` on its line of the text report.
fn text_value<'a>(stdout: &'a str, label: &str) -> &'a str {
    let line = stdout.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label:?} line in:\n{stdout}"));
    line[label.len()..].trim()
}

#[test]
fn unknown_key_is_refused_naming_the_key_and_the_file() {
    let s = Scratch::new("config-unknown");
    let dataset = tiny_dataset(&s);
    let config = s.write("engine.yaml", "max_batch_size: 3\nmax_batch_sise: 4\n");
    let run = throughput(&dataset, &config, &[]);
    run.fails_with(1, &["max_batch_sise", &config, "max_num_tokens", "kv_cache_config", "cuda_graph_config"]);
    assert!(run.stdout.is_empty(), "no report for a failed run: {}", run.stdout);

    let nested = s.write("nested.json", r#"{"kv_cache_config": {"max_tokens": 64, "block_size": 4}}"#);
    throughput(&dataset, &nested, &[]).fails_with(1, &["block_size", &nested, "tokens_per_block"]);
}

#[test]
fn yaml_file_sets_the_engine_limits_and_flags_win() {
    let s = Scratch::new("config-yaml");
    let dataset = tiny_dataset(&s);
    // CUDA graph settings and the GPU fraction are parsed but do not apply on the CPU.
    let config = s.write(
        "engine.yaml",
        "max_batch_size: 3\n\
         max_num_tokens: 48\n\
         kv_cache_config:\n  max_tokens: 512\n  tokens_per_block: 8\n  free_gpu_memory_fraction: 0.5\n\
         cuda_graph_config:\n  enable_padding: true\n  batch_sizes: [1, 2, 3]\n",
    );
    let report_path = s.path("report.json");
    let log_path = s.path("iterations.jsonl");
    let run = throughput(&dataset, &config, &["--report-json", &report_path, "--iteration-log", &log_path]).ok();
    assert_eq!(text_value(&run.stdout, "Max Runtime Batch Size:"), "3");
    assert_eq!(text_value(&run.stdout, "Max Runtime Tokens:"), "48");
    assert_eq!(text_value(&run.stdout, "KV Cache:"), "64 blocks x 8 tokens (512 tokens)");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).expect("the JSON report parses");
    assert_eq!(report["world_info"]["max_batch_size"].as_u64(), Some(3));
    assert_eq!(report["world_info"]["max_num_tokens"].as_u64(), Some(48));
    assert_eq!(report["lumen"]["kv_cache_blocks"].as_u64(), Some(64));
    assert_eq!(report["lumen"]["kv_block_size"].as_u64(), Some(8));
    assert_eq!(report["request_info"]["num_requests"].as_u64(), Some(8));
    let log = json_lines(&log_path);
    assert!(!log.is_empty(), "empty iteration log");
    for l in &log {
        let n = |f: &str| l[f].as_u64().unwrap_or_else(|| panic!("{f} missing from {l}"));
        assert!(n("num_ctx_requests") + n("num_gen_requests") <= 3, "over the file's max_batch_size: {l}");
        assert!(n("num_ctx_tokens") + n("num_gen_tokens") <= 48, "over the file's max_num_tokens: {l}");
    }
    assert!(log.iter().any(|l| l["num_ctx_requests"].as_u64().unwrap() + l["num_gen_requests"].as_u64().unwrap() == 3));

    // Flags on the command line win over the file; what they leave out still comes from it.
    let run = throughput(&dataset, &config, &["--max-batch-size", "2", "--kv-block-size", "16"]).ok();
    assert_eq!(text_value(&run.stdout, "Max Runtime Batch Size:"), "2");
    assert_eq!(text_value(&run.stdout, "Max Runtime Tokens:"), "48");
    assert_eq!(text_value(&run.stdout, "KV Cache:"), "32 blocks x 16 tokens (512 tokens)");
}
