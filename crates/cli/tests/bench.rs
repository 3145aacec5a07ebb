//! End-to-end tests of `lumen bench`: `prepare-dataset` (token-norm-dist, token-unif-dist,
//! real-dataset), and `throughput` / `latency` on the tiny preset: the trtllm-bench text report,
//! the JSON report, and the per-iteration log, whose token counts must account for every
//! generated token.

mod common;

use common::{json_lines, lumen, read_entries, Entry, Scratch};
use serde_json::Value;

const NORM_ARGS: [&str; 11] =
    ["token-norm-dist", "--num-requests", "8", "--input-mean", "20", "--input-stdev", "4", "--output-mean", "6", "--output-stdev", "2"];

/// `lumen bench prepare-dataset [prefix...] --output out [kind...]`, which must succeed.
fn prepare(prefix: &[&str], out: &str, kind: &[&str]) -> Vec<Entry> {
    let mut args = vec!["bench", "prepare-dataset"];
    args.extend_from_slice(prefix);
    args.extend(["--output", out]);
    args.extend_from_slice(kind);
    let run = lumen(&args).ok();
    let entries = read_entries(out);
    assert!(run.stderr.contains(&format!("wrote {} requests to {out}", entries.len())), "missing summary line on stderr:\n{}", run.stderr);
    entries
}

fn assert_task_ids(entries: &[Entry]) {
    let ids: Vec<u64> = entries.iter().map(|e| e.task_id).collect();
    assert_eq!(ids, (0..entries.len() as u64).collect::<Vec<_>>(), "task ids must count from 0");
}

#[test]
fn norm_dist_on_the_default_model() {
    let s = Scratch::new("norm");
    let out = s.path("norm.jsonl");
    let entries = prepare(&[], &out, &NORM_ARGS);
    assert_eq!(entries.len(), 8);
    assert_task_ids(&entries);
    for e in &entries {
        assert!(!e.input_ids.is_empty() && e.output_tokens >= 1, "{e:?}");
        assert!(e.input_ids.iter().all(|&t| t < 49152), "id outside SmolLM2's vocabulary of 49152: {e:?}");
        assert!(!e.input_ids.contains(&2), "EOS id 2 in a synthetic prompt: {e:?}");
        // One z-score per request gives both lengths: input = ceil(20 + 4z), output =
        // max(1, ceil(6 + 2z)), so (input - 20) / 4 and (output - 6) / 2 lie in [z, z + 0.5).
        if e.output_tokens > 1 {
            let zi = (e.input_ids.len() as f64 - 20.0) / 4.0;
            let zo = (e.output_tokens as f64 - 6.0) / 2.0;
            assert!((zi - zo).abs() < 0.5, "input and output lengths come from different z-scores: {e:?}");
        }
    }
    // Eight draws of N(20, 4) are not all equal.
    let lens: Vec<usize> = entries.iter().map(|e| e.input_ids.len()).collect();
    assert!(lens.iter().any(|&l| l != lens[0]), "all input lengths equal: {lens:?}");
}

#[test]
fn norm_dist_seed_decides_the_file() {
    let s = Scratch::new("seed");
    let tiny = ["--model", "tiny"];
    let default_seed = s.path("default.jsonl");
    let seed420 = s.path("420.jsonl");
    let again = s.path("420-again.jsonl");
    let seed7 = s.path("7.jsonl");
    prepare(&tiny, &default_seed, &NORM_ARGS);
    prepare(&["--model", "tiny", "--random-seed", "420"], &seed420, &NORM_ARGS);
    prepare(&["--model", "tiny", "--random-seed", "420"], &again, &NORM_ARGS);
    let other = prepare(&["--model", "tiny", "--random-seed", "7"], &seed7, &NORM_ARGS);
    let read = |p: &str| std::fs::read(p).unwrap();
    assert_eq!(read(&seed420), read(&again), "same seed, different files");
    assert_eq!(read(&default_seed), read(&seed420), "the default --random-seed is trtllm-bench's 420");
    assert_ne!(read(&seed420), read(&seed7), "different seeds, identical files");
    // The tiny preset: vocabulary 512, EOS 2.
    assert!(other.iter().flat_map(|e| &e.input_ids).all(|&t| t < 512 && t != 2));
}

#[test]
fn unif_dist_lengths_stay_in_range() {
    let s = Scratch::new("unif");
    let out = s.path("unif.jsonl");
    let kind =
        ["token-unif-dist", "--num-requests", "40", "--input-min", "3", "--input-max", "9", "--output-min", "2", "--output-max", "4"];
    let entries = prepare(&["--model", "tiny"], &out, &kind);
    assert_eq!(entries.len(), 40);
    assert_task_ids(&entries);
    for e in &entries {
        assert!((3..=9).contains(&e.input_ids.len()), "input length outside [3, 9]: {e:?}");
        assert!((2..=4).contains(&e.output_tokens), "output length outside [2, 4]: {e:?}");
        assert!(e.input_ids.iter().all(|&t| t < 512 && t != 2), "{e:?}");
    }
    // Both lists come from generators seeded alike: the same word gives each request's two
    // lengths (unless one of them redraws, which ranges this small almost never do), so they rise together.
    let mut pairs: Vec<(usize, u64)> = entries.iter().map(|e| (e.input_ids.len(), e.output_tokens)).collect();
    pairs.sort_unstable();
    assert!(pairs.windows(2).all(|w| w[0].1 <= w[1].1), "lengths not drawn from one u per request: {pairs:?}");
    // 40 draws cover both ends of the output range.
    assert!(pairs.iter().any(|p| p.1 == 2) && pairs.iter().any(|p| p.1 == 4), "{pairs:?}");
}

#[test]
fn real_dataset_from_text_and_jsonl() {
    let s = Scratch::new("real");
    // Plain text: one prompt per non-empty line.
    let text = s.write("prompts.txt", "What is the capital of France?\n\nTell me a joke about cats.\nHello\n");
    let out = s.path("text.jsonl");
    let entries = prepare(&[], &out, &["real-dataset", "--dataset-path", &text, "--output-len-dist", "5,0"]);
    assert_eq!(entries.len(), 3, "the blank line is not a prompt: {entries:?}");
    assert_task_ids(&entries);
    for e in &entries {
        assert!(!e.input_ids.is_empty());
        assert!(e.input_ids.iter().all(|&t| t < 49152));
        assert_eq!(e.output_tokens, 5, "--output-len-dist 5,0 gives exactly 5: {e:?}");
    }
    // SmolLM2's tokenizer, without BOS: the ids `generate` also sees for this prompt.
    assert_eq!(entries[0].input_ids, [1780, 314, 260, 3575, 282, 4649, 47]);
    assert_eq!(entries[2].input_ids.len(), 1, "\"Hello\" is one token");

    // JSONL: the prompt under "prompt", "text", "input" or "question"; --num-requests keeps the first n.
    let jsonl = s.write(
        "prompts.jsonl",
        "{\"prompt\":\"What is 2+2?\"}\n{\"text\":\"Summarize the plot of Hamlet.\"}\n{\"question\":\"Why is the sky blue?\",\"id\":3}\n",
    );
    let out = s.path("jsonl.jsonl");
    let all = prepare(&[], &out, &["real-dataset", "--dataset-path", &jsonl, "--output-len-dist", "5,0"]);
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|e| !e.input_ids.is_empty() && e.output_tokens == 5), "{all:?}");
    let out2 = s.path("jsonl2.jsonl");
    let two = prepare(&[], &out2, &["real-dataset", "--dataset-path", &jsonl, "--output-len-dist", "5,0", "--num-requests", "2"]);
    assert_eq!(two, all[..2].to_vec());
}

/// A tiny-preset dataset of 8 requests (ids < 512), returned with its path.
fn tiny_dataset(s: &Scratch) -> (String, Vec<Entry>) {
    let path = s.path("tiny.jsonl");
    let entries = prepare(&["--model", "tiny"], &path, &NORM_ARGS);
    assert_eq!(entries.len(), 8);
    (path, entries)
}

/// The value printed after `label` on its line of the text report.
fn text_value<'a>(stdout: &'a str, label: &str) -> &'a str {
    let line = stdout.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label:?} line in:\n{stdout}"));
    line[label.len()..].trim()
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().unwrap_or_else(|| panic!("{path:?} is not a number in the report: {cur}"))
}

fn sum(log: &[Value], field: &str) -> u64 {
    log.iter().map(|l| l[field].as_u64().unwrap_or_else(|| panic!("{field} missing from {l}"))).sum()
}

/// Checks that every line of the iteration log is a JSON object with the expected fields, that
/// iterations are numbered consecutively, and that the limits hold in each of them.
fn check_iteration_log(log: &[Value], max_tokens: u64, max_batch: u64, kv_blocks: u64, block_size: u64) {
    assert!(!log.is_empty(), "empty iteration log");
    for (i, l) in log.iter().enumerate() {
        for f in [
            "iter",
            "num_ctx_tokens",
            "num_gen_tokens",
            "num_ctx_requests",
            "num_gen_requests",
            "used_num_blocks",
            "free_num_blocks",
            "max_num_blocks",
            "num_completed_requests",
            "num_preempted_requests",
        ] {
            assert!(l[f].is_u64(), "line {}: field {f} missing or not a count: {l}", i + 1);
        }
        assert!(l["iter_latency_ms"].is_f64(), "line {}: no iter_latency_ms: {l}", i + 1);
        let get = |f: &str| l[f].as_u64().unwrap();
        if i > 0 {
            assert_eq!(get("iter"), log[i - 1]["iter"].as_u64().unwrap() + 1, "iterations not consecutive at line {}", i + 1);
        }
        assert!(get("num_ctx_tokens") + get("num_gen_tokens") <= max_tokens, "line {}: over --max-num-tokens: {l}", i + 1);
        assert!(get("num_ctx_requests") + get("num_gen_requests") <= max_batch, "line {}: over --max-batch-size: {l}", i + 1);
        // A generation request feeds exactly its last sampled token.
        assert_eq!(get("num_gen_tokens"), get("num_gen_requests"), "line {}: {l}", i + 1);
        assert_eq!(get("used_num_blocks") + get("free_num_blocks"), kv_blocks, "line {}: blocks do not add up: {l}", i + 1);
        assert_eq!(get("max_num_blocks"), kv_blocks, "line {}", i + 1);
        assert_eq!(get("tokens_per_block"), block_size, "line {}", i + 1);
    }
}

/// `lumen bench throughput` of the `tiny` preset on `dataset` with `extra` flags, writing the JSON
/// report and the iteration log to the paths given; the run must succeed.
fn throughput_on_tiny(dataset: &str, report: &str, log: &str, extra: &[&str]) -> common::Run {
    let args = ["bench", "throughput", "--model", "tiny", "--dataset", dataset, "--report-json", report, "--iteration-log", log];
    lumen(&[&args[..], extra].concat()).ok()
}

#[test]
fn throughput_report_json_and_iteration_log() {
    let s = Scratch::new("throughput");
    let (dataset, entries) = tiny_dataset(&s);
    let report_path = s.path("report.json");
    let log_path = s.path("iterations.jsonl");
    let run = throughput_on_tiny(&dataset, &report_path, &log_path, &["--eos-id", "-1", "--streaming"]);
    let out = &run.stdout;

    // Section headings, in trtllm-bench's order, lumen's own last.
    let mut at = 0;
    for heading in [
        "= ENGINE DETAILS",
        "= MACHINE DETAILS",
        "= REQUEST DETAILS",
        "= WORLD + RUNTIME INFORMATION",
        "= PERFORMANCE OVERVIEW",
        "-- Per-Request Time-per-Output-Token [TPOT] Breakdown (ms)",
        "-- Per-Request Time-to-First-Token [TTFT] Breakdown (ms)",
        "-- Per-Request Generation Throughput [GTPS] Breakdown (tps/user)",
        "-- Request Latency Breakdown (ms)",
        "= DATASET DETAILS",
        "= LUMEN DETAILS",
    ] {
        let found = out[at..].find(heading).unwrap_or_else(|| panic!("{heading:?} missing or out of order in:\n{out}"));
        at += found + heading.len();
    }
    for tag in ["TTFT", "TPOT", "GTPS", "Latency", "Overhead"] {
        for p in ["MINIMUM", "MAXIMUM", "AVERAGE", "P50", "P90", "P95", "P99"] {
            let v: f64 = text_value(out, &format!("[{tag}] {p:<7}:")).parse().expect("a number");
            assert!(v.is_finite() && v >= 0.0, "[{tag}] {p} = {v}");
        }
    }
    for label in [
        "Request Throughput (req/sec):",
        "Total Output Throughput (tokens/sec):",
        "Total Token Throughput (tokens/sec):",
        "Total Latency (ms):",
        "Average request latency (ms):",
        "Per GPU Output Throughput (tps/gpu):",
        "Average time-to-first-token [TTFT] (ms):",
        "Average time-per-output-token [TPOT] (ms):",
        "Number of concurrent requests:",
    ] {
        let v: f64 = text_value(out, label).parse().unwrap_or_else(|_| panic!("{label} is not a number"));
        assert!(v > 0.0, "{label} {v}");
    }
    assert_eq!(text_value(out, "Number of requests:"), "8");
    assert_eq!(text_value(out, "Number of warm-up requests:"), "2");
    assert_eq!(text_value(out, "Concurrency:"), "unlimited");
    assert_eq!(text_value(out, "Streaming:"), "on");
    assert_eq!(text_value(out, "EOS ID:"), "ignored");
    assert_eq!(text_value(out, "Model:"), "tiny@0");
    assert_eq!(text_value(out, "Scheduling Policy:"), "GUARANTEED_NO_EVICT");
    assert_eq!(text_value(out, "Number of Sequences:"), "8");

    // The JSON report carries trtllm-bench's keys and agrees with the dataset and with the text.
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).expect("the JSON report parses");
    let total_in: u64 = entries.iter().map(|e| e.input_ids.len() as u64).sum();
    let total_out: u64 = entries.iter().map(|e| e.output_tokens).sum();
    let n = entries.len() as f64;
    let avg_out = num(&report, &["request_info", "avg_output_length"]);
    assert!((avg_out * n - total_out as f64).abs() < 1e-9, "EOS ignored: every request yields its output_tokens");
    assert!((num(&report, &["request_info", "avg_input_length"]) * n - total_in as f64).abs() < 1e-9);
    assert_eq!(report["request_info"]["num_requests"].as_u64(), Some(8));
    assert_eq!(report["dataset"]["num_requests"].as_u64(), Some(8));
    assert_eq!(report["lumen"]["concurrency"], Value::Null);
    assert_eq!(report["lumen"]["streaming"].as_bool(), Some(true));
    assert_eq!(report["lumen"]["eos_id"], Value::Null);
    assert_eq!(report["world_info"]["scheduling_policy"], "GUARANTEED_NO_EVICT");
    assert_eq!(
        format!("{:.4}", num(&report, &["performance", "system_output_throughput_tok_s"])),
        text_value(out, "Total Output Throughput (tokens/sec):")
    );
    assert_eq!(format!("{:.4}", num(&report, &["performance", "total_latency_ms"])), text_value(out, "Total Latency (ms):"));
    let tput = num(&report, &["performance", "system_output_throughput_tok_s"]);
    let latency_s = num(&report, &["performance", "total_latency_ms"]) / 1e3;
    assert!((tput * latency_s - total_out as f64).abs() < 1e-6 * total_out as f64, "throughput x latency != output tokens");
    for p in ["p50", "p90", "p95", "p99"] {
        let ttft = num(&report, &["streaming_metrics", "ttft_percentiles", p]);
        let latency = num(&report, &["performance", "request_latency_percentiles_ms", p]);
        assert!(ttft > 0.0 && ttft <= latency, "{p}: TTFT {ttft} vs request latency {latency}");
        assert!(num(&report, &["streaming_metrics", "tpot_percentiles", p]) > 0.0);
        assert!(num(&report, &["streaming_metrics", "gen_tps_percentiles", p]) > 0.0);
        assert!(num(&report, &["lumen", "caller_overhead_ms", p]) >= 0.0);
    }

    // The iteration log accounts for every token. Without preemption each request samples its
    // first token at the end of its prefill (a context step) and every later token in a
    // generation step of one token, so sum(num_gen_tokens) + requests = output tokens, and
    // prompts are fed exactly once: sum(num_ctx_tokens) = input tokens.
    let log = json_lines(&log_path);
    let kv_blocks = report["lumen"]["kv_cache_blocks"].as_u64().unwrap();
    check_iteration_log(&log, 2048, 64, kv_blocks, 16);
    assert_eq!(sum(&log, "num_preempted_requests"), 0, "a 1 GiB cache needs no preemption here");
    assert_eq!(sum(&log, "num_gen_tokens") + entries.len() as u64, total_out, "generated tokens unaccounted for");
    assert_eq!(sum(&log, "num_ctx_tokens"), total_in, "prompt tokens fed more or less than once");
    assert_eq!(sum(&log, "num_completed_requests"), 8, "the log covers the 8 measured requests, not the warm-up");
}

#[test]
fn latency_runs_one_request_at_a_time_streamed_at_batch_one_without_chunking() {
    let s = Scratch::new("latency");
    let (dataset, entries) = tiny_dataset(&s);
    let report_path = s.path("report.json");
    let log_path = s.path("iterations.jsonl");
    // --max-batch-size is overridden: the latency benchmark runs at batch size 1.
    let run = lumen(&[
        "bench",
        "latency",
        "--model",
        "tiny",
        "--dataset",
        &dataset,
        "--max-batch-size",
        "8",
        "--report-json",
        &report_path,
        "--iteration-log",
        &log_path,
    ])
    .ok();
    assert_eq!(text_value(&run.stdout, "Concurrency:"), "1");
    assert_eq!(text_value(&run.stdout, "Streaming:"), "on");
    assert_eq!(text_value(&run.stdout, "Chunked Prefill:"), "off");
    assert_eq!(text_value(&run.stdout, "Max Runtime Batch Size:"), "1");
    assert_eq!(text_value(&run.stdout, "Scheduling Policy:"), "GUARANTEED_NO_EVICT");
    assert!(run.stdout.contains("[TTFT] P99    :"), "{}", run.stdout);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert_eq!(report["lumen"]["concurrency"].as_u64(), Some(1));
    assert_eq!(report["lumen"]["streaming"].as_bool(), Some(true));
    assert_eq!(report["world_info"]["max_batch_size"].as_u64(), Some(1));
    let total_out: u64 = entries.iter().map(|e| e.output_tokens).sum();
    assert!((num(&report, &["request_info", "avg_output_length"]) * entries.len() as f64 - total_out as f64).abs() < 1e-9);
    assert!(num(&report, &["streaming_metrics", "ttft_percentiles", "p50"]) > 0.0);
    let log = json_lines(&log_path);
    let kv_blocks = report["lumen"]["kv_cache_blocks"].as_u64().unwrap();
    check_iteration_log(&log, 2048, 1, kv_blocks, 16);
    for l in &log {
        assert!(l["num_active_requests"].as_u64().unwrap() <= 1, "more than one request in flight: {l}");
        assert_eq!(l["num_ctx_requests"].as_u64().unwrap() + l["num_gen_requests"].as_u64().unwrap(), 1, "{l}");
    }
    // One request at a time, each prompt prefilled whole: one iteration per output token.
    assert_eq!(log.len() as u64, total_out);
}

/// `--concurrency 0` is unlimited, as in trtllm-bench; `--num-requests` above the dataset's size
/// runs the whole dataset, and below it the first N.
#[test]
fn concurrency_zero_is_unlimited_and_num_requests_is_capped_to_the_dataset() {
    let s = Scratch::new("options");
    let (dataset, _) = tiny_dataset(&s);
    let log_path = s.path("iterations.jsonl");
    let run = lumen(&[
        "bench",
        "throughput",
        "--model",
        "tiny",
        "--dataset",
        &dataset,
        "--concurrency",
        "0",
        "--num-requests",
        "50",
        "--iteration-log",
        &log_path,
    ])
    .ok();
    assert_eq!(text_value(&run.stdout, "Concurrency:"), "unlimited");
    assert_eq!(text_value(&run.stdout, "Number of requests:"), "8");
    // Unlimited: all 8 requests are admitted together in the first iteration.
    let log = json_lines(&log_path);
    assert_eq!(log[0]["num_ctx_requests"].as_u64(), Some(8), "{}", log[0]);
    let run = lumen(&["bench", "throughput", "--model", "tiny", "--dataset", &dataset, "--num-requests", "3"]).ok();
    assert_eq!(text_value(&run.stdout, "Number of requests:"), "3");
    assert_eq!(text_value(&run.stdout, "Number of Sequences:"), "3");
}

/// A dataset line may give its prompt as text (tokenized on load with the model's tokenizer) or
/// as `logits`, as in trtllm-bench.
#[test]
fn dataset_lines_with_prompt_text_or_logits_run() {
    let s = Scratch::new("prompt-lines");
    let dataset = s.write(
        "mixed.jsonl",
        "{\"task_id\":0,\"prompt\":\"What is the capital of France?\",\"output_tokens\":2}\n{\"task_id\":1,\"logits\":[1780,314],\"output_tokens\":2}\n",
    );
    let run = lumen(&["bench", "throughput", "--dataset", &dataset, "--warmup", "0"]).ok();
    // The prompt is 7 SmolLM2 tokens, the logits 2: an average of 4.5.
    assert_eq!(text_value(&run.stdout, "Average Input Length (tokens):"), "4.5000");
    let run = lumen(&["bench", "throughput", "--model", "tiny", "--dataset", &dataset]);
    run.fails_with(1, &["mixed.jsonl:1: task 0: the prompt is text but the model has no tokenizer"]);
}

/// prepare-dataset on SmolLM2 draws no control token (ids 0 to 16, EOS 2 among them) and no id
/// twice within a request, which is far shorter than the vocabulary.
#[test]
fn synthetic_prompts_hold_no_special_token_and_no_repeated_id() {
    let s = Scratch::new("special");
    let out = s.path("norm.jsonl");
    let kind = ["token-norm-dist", "--num-requests", "20", "--input-mean", "400", "--input-stdev", "100", "--output-mean", "4"];
    let entries = prepare(&[], &out, &kind);
    for e in &entries {
        assert!(e.input_ids.iter().all(|&t| (17..49152).contains(&t)), "a special or out-of-vocabulary id: {e:?}");
        let distinct: std::collections::HashSet<&u64> = e.input_ids.iter().collect();
        assert_eq!(distinct.len(), e.input_ids.len(), "task {}: a repeated id", e.task_id);
    }
}

/// A small KV budget chunks prefill and preempts, and every request still gets all its tokens,
/// with and without the overlap scheduler.
#[test]
fn small_budget_chunks_prefill_and_preempts_but_finishes() {
    let s = Scratch::new("small");
    let (dataset, entries) = tiny_dataset(&s);
    assert!(entries.iter().all(|e| e.input_ids.len() > 8), "every prompt must need chunking under --max-num-tokens 8");
    for overlap in ["off", "on"] {
        let report_path = s.path(&format!("report-{overlap}.json"));
        let log_path = s.path(&format!("iterations-{overlap}.jsonl"));
        let limits = ["--max-num-tokens", "8", "--kv-cache-tokens", "64", "--kv-block-size", "4"];
        let policy = ["--scheduler-policy", "max-utilization", "--overlap-scheduler", overlap];
        let run = throughput_on_tiny(&dataset, &report_path, &log_path, &[&limits[..], &policy[..]].concat());
        assert_eq!(text_value(&run.stdout, "Overlap Scheduler:"), overlap);
        assert_eq!(text_value(&run.stdout, "KV Cache:"), "16 blocks x 4 tokens (64 tokens)");
        assert_eq!(text_value(&run.stdout, "Max Runtime Tokens:"), "8");
        assert_eq!(text_value(&run.stdout, "Scheduling Policy:"), "MAX_UTILIZATION");
        assert_eq!(text_value(&run.stdout, "Streaming:"), "off");
        assert!(!run.stdout.contains("[TTFT]"), "no streaming metrics without --streaming");
        let report: Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
        assert!(report["streaming_metrics"].is_null());
        assert_eq!(report["lumen"]["overlap_scheduler"], overlap == "on");
        let total_in: u64 = entries.iter().map(|e| e.input_ids.len() as u64).sum();
        let total_out: u64 = entries.iter().map(|e| e.output_tokens).sum();
        let avg_out = num(&report, &["request_info", "avg_output_length"]);
        assert!((avg_out * entries.len() as f64 - total_out as f64).abs() < 1e-9, "a request lost tokens");

        let log = json_lines(&log_path);
        check_iteration_log(&log, 8, 64, 16, 4);
        let preempted = sum(&log, "num_preempted_requests");
        assert!(preempted > 0, "64 KV tokens for 8 requests of ~30 tokens must preempt");
        assert_eq!(sum(&log, "num_completed_requests"), 8);
        // A preempted request is recomputed from scratch, so prompts are fed at least once and
        // some tokens more than once.
        let fed = sum(&log, "num_ctx_tokens") + sum(&log, "num_gen_tokens");
        assert!(fed > total_in + total_out - entries.len() as u64, "preemption recomputed nothing");
        // Each preemption adds at most one sample outside the generation steps (the recompute's
        // final chunk): gen + requests <= output <= gen + requests + preemptions.
        let gen = sum(&log, "num_gen_tokens");
        let n = entries.len() as u64;
        assert!(
            gen + n <= total_out && total_out <= gen + n + preempted,
            "gen {gen}, requests {n}, preempted {preempted}, output {total_out}"
        );
    }
}

/// `--quantization fp8` runs on the CPU (the FP8 reference) and the report names what the model
/// computed in and its quantization; without it the report says float32 (the CPU's type) and
/// None, never a fixed string.
#[test]
fn the_report_names_the_dtype_and_fp8_quantization() {
    let s = Scratch::new("bench-fp8");
    let (dataset, _) = tiny_dataset(&s);
    for (flags, dtype, quantization) in
        [(&["--quantization", "fp8"][..], "float32 over FP8-quantized layer weights and activations", "FP8"), (&[][..], "float32", "None")]
    {
        let args: Vec<&str> = ["bench", "throughput", "--model", "tiny-untied", "--device", "cpu", "--dataset", &dataset]
            .into_iter()
            .chain(flags.iter().copied())
            .collect();
        let run = lumen(&args).ok();
        assert_eq!(text_value(&run.stdout, "Dtype:"), dtype, "{flags:?}");
        assert_eq!(text_value(&run.stdout, "Quantization:"), quantization, "{flags:?}");
    }
}
