//! End-to-end runs of `lumen` on the CUDA device. Without a GPU, `--device cuda` must fail
//! cleanly and the GPU runs are skipped with a message; on the GPU machine they run for real
//! (see docs/gpu.md).

mod common;

use common::{fixed_length_dataset as dataset, gpu_present, lumen, lumen_env, Scratch};
use serde_json::Value;

/// Runs everywhere: on a GPU machine the device is hidden with `CUDA_VISIBLE_DEVICES=""`.
#[test]
fn device_cuda_without_a_gpu_is_a_clear_error() {
    let hidden = [("CUDA_VISIBLE_DEVICES", "")];
    let run = lumen_env(&["generate", "--device", "cuda", "--model", "tiny", "--prompt-ids", "1,2,3", "--max-tokens", "2"], &hidden);
    run.fails_with(1, &["--device cuda", "CUDA"]);
    let auto = lumen_env(&["generate", "--device", "auto", "--model", "tiny", "--prompt-ids", "1,2,3", "--max-tokens", "2"], &hidden).ok();
    assert!(auto.stderr.contains("running on the CPU"), "auto must say it fell back: {}", auto.stderr);
}

#[test]
fn bench_throughput_on_cuda_with_graphs_profiling_and_device_time() {
    if !gpu_present() {
        return;
    }
    let s = Scratch::new("cuda-throughput");
    let data = dataset(&s, "smollm2-135m", "40", "100", "24");
    let report = s.path("report.json");
    let log = s.path("iterations.jsonl");
    let trace = s.path("trace.lumen");
    let run = lumen_env(
        &[
            "bench",
            "throughput",
            "--device",
            "cuda",
            "--model",
            "smollm2-135m",
            "--dataset",
            &data,
            "--eos-id",
            "-1",
            "--max-batch-size",
            "16",
            "--streaming",
            "--report-json",
            &report,
            "--iteration-log",
            &log,
            "--trace",
            &trace,
        ],
        &[("LUMEN_PROFILE_START_STOP", "3-6")],
    )
    .ok();
    assert!(run.stderr.contains("cuda:0"), "the load line names the device: {}", run.stderr);
    assert!(run.stdout.contains("bfloat16") && run.stdout.contains("SMs"), "the report names the GPU and dtype: {}", run.stdout);
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    eprintln!("{}", run.stdout);
    let iterations: Vec<Value> = std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(r["lumen"]["total_output_tokens"].as_u64(), Some(40 * 24), "every request produced its 24 tokens");
    assert_eq!(r["request_info"]["num_requests"].as_u64(), Some(40));
    // Streamed on the GPU: TTFT and TPOT come from the chunks the caller took off each stream,
    // every request's first chunk before its end, and the caller's latency is never below the
    // engine's.
    let streaming = &r["streaming_metrics"];
    for p in ["minimum", "p50", "maximum"] {
        let ttft = streaming["ttft_percentiles"][p].as_f64().unwrap();
        assert!(ttft > 0.0 && ttft < r["performance"]["request_latency_percentiles_ms"]["maximum"].as_f64().unwrap(), "TTFT {p} {ttft}");
        assert!(streaming["tpot_percentiles"][p].as_f64().unwrap() > 0.0, "TPOT {p}");
        assert!(r["lumen"]["caller_overhead_ms"][p].as_f64().unwrap() >= 0.0, "caller-side overhead {p}");
    }
    assert!(iterations.iter().all(|i| i["device_step_ms"].as_f64().is_some_and(|d| d > 0.0)), "device time on every iteration");
    // The host waits for each step before it starts the next, so a step's device time lies within
    // its period.
    let decode = &r["lumen"]["decode_steps"];
    let (device, period) = (decode["device_ms"].as_f64().unwrap_or(0.0), decode["period_ms"].as_f64().unwrap_or(0.0));
    assert!(device > 0.0 && device <= period, "decode steps: device {device} ms of {period} ms start to start");
    assert!(run.stdout.contains("Decode Step (ms):"), "{}", run.stdout);
    let info = lumen(&["trace", "info", &trace]).ok();
    assert!(info.stdout.contains("iterations"), "{}", info.stdout);
    let t = lumen_trace::store::read_trace(std::path::Path::new(&trace)).unwrap();
    assert_eq!(t.meta("backend"), Some("cuda"));
    assert!(t.meta("gpu").is_some_and(|g| g.contains("(cuda:0)")), "the trace names the GPU: {:?}", t.meta("gpu"));
}

#[test]
fn generate_on_cuda_streams_the_same_tokens_as_the_cpu_for_a_preset() {
    if !gpu_present() {
        return;
    }
    let args = |device| {
        vec![
            "generate".to_string(),
            "--device".into(),
            device,
            "--model".into(),
            "smollm2-135m-untied@7".into(),
            "--prompt-ids".into(),
            "5,17,300,4000,12,9".into(),
            "--max-tokens".into(),
            "8".into(),
        ]
    };
    let cpu_args = args("cpu".into());
    let cuda_args = args("cuda".into());
    let cpu = lumen(&cpu_args.iter().map(String::as_str).collect::<Vec<_>>()).ok();
    let cuda = lumen(&cuda_args.iter().map(String::as_str).collect::<Vec<_>>()).ok();
    assert_eq!(cuda.stdout.lines().next(), cpu.stdout.lines().next(), "greedy ids differ between devices");
    let ids: std::collections::BTreeSet<&str> = cpu.stdout.trim().split(',').collect();
    assert!(ids.len() >= 3, "the chain must vary to compare anything: {}", cpu.stdout);
}

/// `LUMEN_PDL_EARLY=1` changes when launches start, never what they compute: a dense preset and a
/// mixture-of-experts one (whose down product reads the routing) give the default run's tokens.
#[test]
fn launches_started_before_their_wait_give_the_same_tokens() {
    if !gpu_present() {
        return;
    }
    for model in ["smollm2-135m-untied@7", "qwen3-30b-a3b+layers=2"] {
        let args = ["generate", "--device", "cuda", "--model", model, "--prompt-ids", "5,17,300,4000,12,9", "--max-tokens", "12"];
        let default = lumen_env(&args, &[("LUMEN_PDL_EARLY", "0")]).ok();
        let early = lumen_env(&args, &[("LUMEN_PDL_EARLY", "1")]).ok();
        let ids = default.stdout.lines().next().unwrap_or_default().to_string();
        assert_eq!(early.stdout.lines().next().unwrap_or_default(), ids, "{model}: early launches changed the tokens");
        let distinct: std::collections::BTreeSet<&str> = ids.split(',').collect();
        assert!(distinct.len() >= 3, "{model}: the chain must vary to compare anything: {ids}");
    }
}

#[test]
fn cuda_bad_input_is_refused_before_any_work() {
    if !gpu_present() {
        return;
    }
    let s = Scratch::new("cuda-bad");
    lumen(&["generate", "--device", "cuda", "--model", "tiny", "--prompt-ids", "1,2", "--max-tokens", "2"])
        .fails_with(1, &["head_dim 16", "--device cpu"]);
    let too_big = too_big_for_any_gpu(&s);
    lumen(&["generate", "--device", "cuda", "--model", &too_big, "--prompt-ids", "1,2", "--max-tokens", "2"])
        .fails_with(1, &["does not fit on this GPU"]);
    let data = dataset(&s, "smollm2-135m", "2", "64", "64");
    lumen(&["bench", "throughput", "--device", "cuda", "--model", "smollm2-135m", "--dataset", &data, "--kv-cache-tokens", "32"])
        .fails_with(1, &["nothing was run", "128 tokens"]);
}

/// A Hugging Face model directory of the Llama-3.1-405B shape (about 750 GiB of bf16 weights, more
/// than any single GPU holds) whose one safetensors shard has no tensors: the size check must
/// refuse it before a weight is read.
fn too_big_for_any_gpu(s: &Scratch) -> String {
    let config = r#"{"model_type": "llama", "vocab_size": 128256, "hidden_size": 16384, "intermediate_size": 53248,
        "num_hidden_layers": 126, "num_attention_heads": 128, "num_key_value_heads": 8,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0}"#;
    std::fs::create_dir_all(s.dir.join("llama-405b-shape")).expect("create the model directory");
    s.write("llama-405b-shape/config.json", config);
    let header = b"{}";
    let mut shard = (header.len() as u64).to_le_bytes().to_vec();
    shard.extend_from_slice(header);
    s.write("llama-405b-shape/model.safetensors", shard);
    s.path("llama-405b-shape")
}

#[test]
fn served_logprobs_on_cuda_match_the_cpu() {
    if !gpu_present() {
        return;
    }
    let body = r#"{"prompt": [5, 17, 300, 4000, 12, 9], "max_tokens": 8, "temperature": 0, "ignore_eos": true, "logprobs": 3}"#;
    let answer = |device: &str| {
        let server = common::server::Server::start(&["--device", device, "--model", "smollm2-135m-untied@7"], &[]);
        let reply = server.post("/v1/completions", body);
        assert_eq!(reply.status, 200, "{device}: {}", reply.body);
        reply.json()["choices"][0]["logprobs"].clone()
    };
    let (cpu, cuda) = (answer("cpu"), answer("cuda"));
    assert_eq!(cuda["tokens"], cpu["tokens"], "greedy tokens differ between devices");
    let values =
        |lp: &serde_json::Value| -> Vec<f64> { lp["token_logprobs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
    for (i, (c, g)) in values(&cpu).iter().zip(values(&cuda)).enumerate() {
        assert!((c - g).abs() < 0.1, "token {i}: CPU {c}, CUDA {g}");
    }
    assert_eq!(values(&cuda).len(), 8);
}
