//! End-to-end profiling: `lumen bench throughput` under an iteration window on the real model
//! writes a trace holding exactly the window's iterations, with every phase inside its iteration
//! and the iterations' token counts matching the run; the trace exports to Perfetto and Chrome
//! JSON; `LUMEN_TRACE=*.json` writes Chrome JSON directly; bad windows stop the run at start-up;
//! a window under the overlap scheduler records its own iterations; and a trace whose writer is
//! killed mid-run still loads.

mod common;

use common::{json_lines, lumen, lumen_env, real_model, Scratch};
use lumen_trace::export::perfetto::decode_packets;
use lumen_trace::model::TraceData;
use lumen_trace::store::read_trace;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn dataset(s: &Scratch, model: &str, requests: &str, input: &str, output: &str) -> String {
    let path = s.path("data.jsonl");
    lumen(&[
        "bench",
        "prepare-dataset",
        "--model",
        model,
        "--output",
        &path,
        "token-norm-dist",
        "--num-requests",
        requests,
        "--input-mean",
        input,
        "--output-mean",
        output,
    ])
    .ok();
    path
}

/// Every non-iteration span of an iteration lies inside that iteration's span.
fn assert_phases_nest(t: &TraceData) {
    for it in &t.iterations {
        let outer: Vec<_> = t.spans.iter().filter(|s| s.category == "iteration" && s.iteration == Some(it.iter)).collect();
        assert_eq!(outer.len(), 1, "iteration {} has {} iteration spans", it.iter, outer.len());
        let outer = outer[0];
        assert!(outer.name.starts_with(&format!("iter {}: ", it.iter)), "{}", outer.name);
        assert!(outer.name.ends_with(&format!("{} ctx reqs, {} gen reqs", it.ctx_reqs, it.gen_reqs)), "{}", outer.name);
        let phases: Vec<_> = t.spans.iter().filter(|s| s.category == "phase" && s.iteration == Some(it.iter)).collect();
        let names: Vec<&str> = phases.iter().map(|s| s.name.as_str()).collect();
        for want in ["admit", "schedule", "prepare inputs", "forward", "sample", "update"] {
            assert!(names.contains(&want), "iteration {} lacks phase {want}: {names:?}", it.iter);
        }
        for p in phases {
            assert!(outer.start_ns <= p.start_ns && p.end_ns <= outer.end_ns, "{} escapes iteration {}", p.name, it.iter);
            assert!(p.depth > outer.depth);
        }
    }
}

#[test]
fn a_window_on_the_real_model_records_exactly_its_iterations() {
    let s = Scratch::new("profile-window");
    let model = real_model().display().to_string();
    let data = dataset(&s, &model, "4", "24", "6");
    let (trace, log, report) = (s.path("run.lumen"), s.path("iters.jsonl"), s.path("report.json"));
    let run = lumen_env(
        &[
            "bench",
            "throughput",
            "--model",
            &model,
            "--dataset",
            &data,
            "--iteration-log",
            &log,
            "--report-json",
            &report,
            "--warmup",
            "1",
            "--max-num-tokens",
            "32",
        ],
        &[("LUMEN_PROFILE_START_STOP", "2-4"), ("LUMEN_TRACE", &trace)],
    )
    .ok();
    assert!(run.stderr.contains("recording iterations 2-4"), "{}", run.stderr);
    let t = read_trace(Path::new(&trace)).unwrap();
    assert_eq!(t.meta("complete"), Some("true"));
    assert_eq!(t.meta("windows"), Some("2-4"));
    assert_eq!(t.meta("backend"), Some("cpu"), "the trace names where the model ran");
    assert_eq!(t.iterations.iter().map(|i| i.iter).collect::<Vec<_>>(), vec![2, 3, 4]);
    let tagged: std::collections::BTreeSet<u64> = t.spans.iter().filter_map(|s| s.iteration).collect();
    assert_eq!(tagged.into_iter().collect::<Vec<_>>(), vec![2, 3, 4], "spans outside the window were recorded");
    assert_phases_nest(&t);
    let logged = json_lines(&log);
    for it in &t.iterations {
        let line = logged.iter().find(|l| l["iter"] == it.iter).expect("the iteration log has every iteration");
        assert_eq!(line["num_ctx_tokens"], it.ctx_tokens);
        assert_eq!(line["num_gen_tokens"], it.gen_tokens);
        assert_eq!(line["used_num_blocks"], it.kv_used_blocks);
    }
    assert_eq!(logged[0]["iter"], 0, "iteration numbers restart after warm-up");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let total = |key: &str| logged.iter().map(|l| l[key].as_u64().unwrap()).sum::<u64>();
    assert_eq!(total("num_ctx_tokens"), r["lumen"]["total_input_tokens"].as_u64().unwrap());
    assert_eq!(
        total("num_gen_tokens") + 4,
        r["lumen"]["total_output_tokens"].as_u64().unwrap(),
        "one token per request comes from its prefill"
    );
}

#[test]
fn a_whole_run_adds_up_to_the_report_and_exports() {
    let s = Scratch::new("profile-all");
    let data = dataset(&s, "tiny", "6", "30", "9");
    let (trace, report) = (s.path("all.lumen"), s.path("report.json"));
    lumen(&[
        "bench",
        "throughput",
        "--model",
        "tiny",
        "--dataset",
        &data,
        "--trace",
        &trace,
        "--report-json",
        &report,
        "--max-num-tokens",
        "40",
    ])
    .ok();
    let t = read_trace(Path::new(&trace)).unwrap();
    assert_phases_nest(&t);
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let ctx: u64 = t.iterations.iter().map(|i| i.ctx_tokens).sum();
    let gen: u64 = t.iterations.iter().map(|i| i.gen_tokens).sum();
    assert_eq!(ctx, r["lumen"]["total_input_tokens"].as_u64().unwrap());
    assert_eq!(
        gen + t.requests.len() as u64,
        r["lumen"]["total_output_tokens"].as_u64().unwrap(),
        "one token per request comes from its prefill"
    );
    assert_eq!(t.requests.len(), 6);

    let (pf, cj) = (s.path("all.pftrace"), s.path("all.json"));
    lumen(&["trace", "export", &trace, "--format", "perfetto", "-o", &pf]).ok();
    lumen(&["trace", "export", &trace, "--format", "chrome", "-o", &cj]).ok();
    let packets = decode_packets(&std::fs::read(&pf).unwrap()).unwrap();
    assert!(packets.len() > 2 * t.spans.len(), "{} packets for {} spans", packets.len(), t.spans.len());
    let chrome: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cj).unwrap()).unwrap();
    let complete = chrome["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").count();
    assert_eq!(complete, t.spans.len());
    let info = lumen(&["trace", "info", &trace]).ok();
    assert!(info.stdout.contains(&format!("iterations {}", t.iterations.len())), "{}", info.stdout);
    assert!(info.stdout.contains(&format!("spans        {}", t.spans.len())), "{}", info.stdout);
}

/// The `tiny` preset in f32: one pass reads 119,104 weights of 4 bytes, a token's K and V take
/// 2 · 2 layers · 2 KV heads · 16 · 4 = 512 bytes.
#[test]
fn iterations_say_what_they_read_and_computed_and_meta_the_limits() {
    let s = Scratch::new("profile-work");
    let data = dataset(&s, "tiny", "4", "40", "12");
    let (trace, log) = (s.path("work.lumen"), s.path("iters.jsonl"));
    lumen(&[
        "bench",
        "throughput",
        "--model",
        "tiny",
        "--dataset",
        &data,
        "--trace",
        &trace,
        "--iteration-log",
        &log,
        "--warmup",
        "0",
        "--max-batch-size",
        "4",
        "--max-num-tokens",
        "64",
        "--kv-block-size",
        "8",
    ])
    .ok();
    let t = read_trace(Path::new(&trace)).unwrap();
    let meta = |key: &str| t.meta(key).unwrap_or_else(|| panic!("meta {key} missing: {:?}", t.meta)).to_string();
    assert_eq!(meta("max_batch_size"), "4");
    assert_eq!(meta("max_num_tokens"), "64");
    assert_eq!(meta("kv_block_size"), "8");
    assert_eq!(meta("kv_total_blocks"), t.iterations[0].kv_total_blocks.to_string());
    assert_eq!(meta("kv_bytes_per_token"), "512");
    assert_eq!(meta("weight_bytes"), (119_104 * 4).to_string());
    assert_eq!(meta("weight_dtype"), "f32");
    assert_eq!(meta("model_params"), "119104");

    let logged = json_lines(&log);
    assert_eq!(logged.len(), t.iterations.len());
    let mut decode = Vec::new();
    for (it, line) in t.iterations.iter().zip(&logged) {
        let (weights, kv, flops) = (it.weight_bytes.unwrap(), it.kv_bytes_read.unwrap(), it.flops.unwrap());
        assert!(weights > 0 && kv > 0 && flops > 0.0, "iteration {}: {it:?}", it.iter);
        assert!(it.queued_reqs.is_some(), "iteration {}: {it:?}", it.iter);
        assert_eq!(line["iter"], it.iter);
        assert_eq!((&line["weight_bytes"], &line["kv_bytes_read"]), (&weights.into(), &kv.into()), "iteration {}", it.iter);
        assert_eq!(line["flops"].as_f64(), Some(flops), "iteration {}", it.iter);
        // Attention is part of the FLOPs: 512 a layer-position on `tiny`, one at least a token.
        let attention = it.attention_flops.unwrap();
        assert!(attention >= 512.0 * (it.ctx_tokens + it.gen_tokens) as f64 && attention < flops, "iteration {}: {it:?}", it.iter);
        assert_eq!(line["attention_flops"].as_f64(), Some(attention), "iteration {}", it.iter);
        assert_eq!(line["num_queued_requests"], it.queued_reqs.unwrap());
        if it.ctx_reqs == 0 {
            decode.push((it.gen_reqs, kv));
        }
    }
    assert!(t.iterations.iter().any(|i| i.queued_reqs > Some(0)), "four 40-token prompts wait for a 64-token budget");
    // In decode, the same sequences read one more token's K and V each per iteration.
    let pairs: Vec<_> = decode.windows(2).filter(|p| p[0].0 == p[1].0).collect();
    assert!(pairs.len() >= 5, "{decode:?}");
    for p in pairs {
        assert_eq!(p[1].1, p[0].1 + p[0].0 * 512, "{decode:?}");
    }
}

/// With the overlap scheduler an iteration finishes in the next loop pass: the window still
/// records exactly its iterations, each with its own pass's span named after its batch, and the
/// spans of the pass that finishes the last one.
#[test]
fn a_window_under_the_overlap_scheduler_records_its_iterations_and_the_pass_that_finishes_them() {
    let s = Scratch::new("profile-overlap");
    let data = dataset(&s, "tiny", "4", "20", "6");
    let trace = s.path("overlap.lumen");
    lumen_env(
        &["bench", "throughput", "--model", "tiny", "--dataset", &data, "--warmup", "0", "--overlap-scheduler", "on"],
        &[("LUMEN_PROFILE_START_STOP", "2-4"), ("LUMEN_TRACE", &trace)],
    )
    .ok();
    let t = read_trace(Path::new(&trace)).unwrap();
    assert_eq!(t.meta("overlap_scheduler"), Some("on"));
    assert_eq!(t.iterations.iter().map(|i| i.iter).collect::<Vec<_>>(), vec![2, 3, 4]);
    let tagged: std::collections::BTreeSet<u64> = t.spans.iter().filter_map(|s| s.iteration).collect();
    assert_eq!(tagged.into_iter().collect::<Vec<_>>(), vec![2, 3, 4, 5], "the window's passes and the one that finishes iteration 4");
    for it in &t.iterations {
        let outer: Vec<_> = t.spans.iter().filter(|s| s.category == "iteration" && s.iteration == Some(it.iter)).collect();
        assert_eq!(outer.len(), 1, "iteration {}", it.iter);
        let want = format!("iter {}: {} ctx reqs, {} gen reqs", it.iter, it.ctx_reqs, it.gen_reqs);
        assert_eq!(outer[0].name, want);
        assert!(outer[0].start_ns <= it.start_ns && it.end_ns <= outer[0].end_ns, "the row's window is its pass");
        let finish = t.spans.iter().filter(|s| s.category == "phase" && s.name == "sample" && s.iteration == Some(it.iter + 1));
        assert_eq!(finish.count(), 1, "iteration {} is sampled in the next pass", it.iter);
    }
}

#[test]
fn lumen_trace_json_writes_chrome_json_and_the_environment_wins() {
    let s = Scratch::new("profile-json");
    let data = dataset(&s, "tiny", "3", "10", "4");
    let (json, ignored) = (s.path("t.json"), s.path("ignored.lumen"));
    let run = lumen_env(
        &["bench", "throughput", "--model", "tiny", "--dataset", &data, "--trace", &ignored, "--profile-iters", "0-1"],
        &[("TLLM_TORCH_PROFILE_TRACE", &json), ("TLLM_PROFILE_START_STOP", "1-2")],
    )
    .ok();
    assert!(run.stderr.contains("TLLM_PROFILE_START_STOP=1-2 overrides --profile-iters 0-1"), "{}", run.stderr);
    assert!(run.stderr.contains("overrides --trace"), "{}", run.stderr);
    assert!(!Path::new(&ignored).exists());
    let chrome: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let iterations: Vec<&str> =
        chrome["traceEvents"].as_array().unwrap().iter().filter(|e| e["cat"] == "iteration").map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(iterations.len(), 2, "{iterations:?}");
    assert!(iterations[0].starts_with("iter 1: ") && iterations[1].starts_with("iter 2: "), "{iterations:?}");
}

#[test]
fn debug_api_and_allocation_switches_add_their_rows() {
    let s = Scratch::new("profile-switches");
    let data = dataset(&s, "tiny", "4", "20", "6");
    let trace = s.path("switches.lumen");
    lumen_env(
        &["bench", "throughput", "--model", "tiny", "--dataset", &data, "--trace", &trace, "--warmup", "0"],
        &[("TLLM_NVTX_DEBUG", "1"), ("LUMEN_API_NVTX", "1"), ("TLLM_PROFILE_RECORD_GC", "1")],
    )
    .ok();
    let t = read_trace(Path::new(&trace)).unwrap();
    assert_phases_nest(&t);
    for it in &t.iterations {
        let forward = t.spans.iter().find(|s| s.name == "forward" && s.iteration == Some(it.iter)).unwrap();
        let layers: Vec<_> = t.spans.iter().filter(|s| s.iteration == Some(it.iter) && s.name.starts_with("layer ")).collect();
        assert_eq!(layers.len(), 2, "the tiny preset has two layers");
        for l in layers {
            assert!(forward.start_ns <= l.start_ns && l.end_ns <= forward.end_ns && l.depth > forward.depth, "layer outside forward");
        }
    }
    let firsts = t.marks.iter().filter(|m| m.category == "api" && m.name == "first token").count();
    let finishes = t.marks.iter().filter(|m| m.category == "api" && m.name == "finish").count();
    assert_eq!((firsts, finishes), (4, 4), "every request's first token and finish are marked");
    assert_eq!(t.allocations.len(), t.iterations.len());
    assert!(t.allocations.iter().all(|a| a.count > 0 && a.bytes > 0), "the binary's allocator counts every iteration's allocations");
    let kv: u64 = t.allocations.iter().map(|a| a.kv_blocks_allocated).sum();
    let freed: u64 = t.allocations.iter().map(|a| a.kv_blocks_freed).sum();
    assert_eq!(kv, freed, "every KV block handed out came back");
    assert!(kv > 0);

    let plain = s.path("plain.lumen");
    lumen(&["bench", "throughput", "--model", "tiny", "--dataset", &data, "--trace", &plain, "--warmup", "0"]).ok();
    let p = read_trace(Path::new(&plain)).unwrap();
    assert!(p.spans.iter().all(|s| s.category == "iteration" || s.category == "phase"), "debug ranges need LUMEN_NVTX_DEBUG");
    assert!(p.marks.is_empty());
}

#[test]
fn bad_windows_stop_the_run_at_start_up() {
    let s = Scratch::new("profile-bad");
    let data = dataset(&s, "tiny", "2", "8", "2");
    let trace = s.path("x.lumen");
    for (value, want) in [("10-20,15-30", "overlap"), ("5-x", "\"x\" is not an iteration number"), ("9-3", "ends before it starts")] {
        lumen_env(
            &["bench", "throughput", "--model", "tiny", "--dataset", &data, "--trace", &trace],
            &[("LUMEN_PROFILE_START_STOP", value)],
        )
        .fails_with(1, &["LUMEN_PROFILE_START_STOP", want]);
    }
    lumen(&["bench", "throughput", "--model", "tiny", "--dataset", &data, "--profile-iters", "3-1"])
        .fails_with(1, &["--profile-iters", "ends before"]);
    let garbage = s.write("garbage.lumen", "not a database");
    lumen(&["trace", "info", &garbage]).fails_with(1, &["garbage.lumen", "not a lumen trace"]);
}

#[test]
fn a_killed_writer_leaves_a_readable_trace() {
    let s = Scratch::new("profile-crash");
    let model = real_model().display().to_string();
    let data = dataset(&s, &model, "16", "64", "400");
    let trace = s.path("crash.lumen");
    let mut child = Command::new(common::lumen_bin())
        .args(["bench", "throughput", "--model", &model, "--dataset", &data, "--trace", &trace, "--warmup", "0"])
        .env_remove("LUMEN_PROFILE_START_STOP")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        if let Ok(t) = read_trace(Path::new(&trace)) {
            if t.iterations.len() >= 3 {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no flushed iterations after 120 s");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let t = read_trace(Path::new(&trace)).unwrap();
    assert_eq!(t.meta("complete"), Some("false"), "the writer never finished");
    assert!(t.iterations.len() >= 3);
    assert_phases_nest(&t);
    let info = lumen(&["trace", "info", &trace]).ok();
    assert!(info.stdout.contains("complete   false"), "{}", info.stdout);
}
