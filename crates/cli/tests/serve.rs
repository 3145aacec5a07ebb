//! `lumen serve` end to end, driven with curl as a user would: completions streamed and whole on
//! an untied preset (the same tokens as `lumen generate`), SSE framing and usage, OpenAI-style
//! errors naming the field for every kind of bad input (and a server that outlives them all),
//! the API key, the queue bound and client disconnects, /metrics through a real Prometheus
//! parser, the profiling routes and environment windows, and shutdown on SIGTERM.

mod common;

use common::server::Server;
use common::{lumen, Scratch};
use std::process::{Command, Stdio};

/// Token ids from an SSE body's completion chunks (each carries its `token_ids`), checking the
/// framing: `data: ` events separated by blank lines, ending with `data: [DONE]`.
fn streamed(body: &str) -> (Vec<u64>, Vec<serde_json::Value>) {
    assert!(body.ends_with("data: [DONE]\n\n"), "the stream ends with [DONE]: {body:?}");
    let events: Vec<&str> = body.trim_end().split("\n\n").collect();
    let mut chunks = Vec::new();
    for e in &events[..events.len() - 1] {
        let data = e.strip_prefix("data: ").unwrap_or_else(|| panic!("an event that is not data: {e:?}"));
        chunks.push(serde_json::from_str::<serde_json::Value>(data).unwrap());
    }
    let ids = chunks
        .iter()
        .flat_map(|c| c["choices"][0]["token_ids"].as_array().cloned().unwrap_or_default())
        .map(|v| v.as_u64().unwrap())
        .collect();
    (ids, chunks)
}

/// With the overlap scheduler off and on: a stop seen a step late still ends the answer at the
/// stop token.
#[test]
fn completions_stream_and_whole_give_generate_s_tokens_with_usage() {
    for overlap in ["off", "on"] {
        let server = Server::start(&["--model", "tiny-untied", "--overlap-scheduler", overlap], &[]);
        let body = r#"{"model": "tiny-untied@0", "prompt": [5, 6, 7], "max_tokens": 12, "temperature": 0, "ignore_eos": true, "return_token_ids": true"#;
        let whole = server.post("/v1/completions", &format!("{body}}}"));
        assert_eq!(whole.status, 200, "{}", whole.body);
        let whole = whole.json();
        let ids: Vec<u64> = whole["choices"][0]["token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(whole["usage"], serde_json::json!({"prompt_tokens": 3, "completion_tokens": 12, "total_tokens": 15}));
        assert_eq!(whole["choices"][0]["finish_reason"], "length");
        let generated = lumen(&["generate", "--model", "tiny-untied", "--prompt-ids", "5,6,7", "--max-tokens", "12", "--ignore-eos"]);
        let expected: Vec<u64> = generated.stdout.trim().split(',').map(|t| t.parse().unwrap()).collect();
        assert_eq!(ids, expected, "the server's tokens are generate's");
        assert_eq!(whole["choices"][0]["text"], generated.stdout.trim());

        let stream = server.post("/v1/completions", &format!(r#"{body}, "stream": true, "stream_options": {{"include_usage": true}}}}"#));
        assert_eq!(stream.status, 200);
        let (streamed_ids, chunks) = streamed(&stream.body);
        assert_eq!(streamed_ids, expected);
        let last = chunks.last().unwrap();
        assert_eq!(
            (last["choices"].as_array().map(Vec::len), last["usage"]["completion_tokens"].as_u64()),
            (Some(0), Some(12)),
            "usage comes last"
        );
        assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "length");
        assert!(chunks.iter().all(|c| c["object"] == "text_completion" && c["id"] == chunks[0]["id"]));

        // A stop id ends the answer with it, and finish_reason stop.
        let stop = server.post("/v1/completions", &format!(r#"{body}, "stop_token_ids": [{}]}}"#, expected[4])).json();
        let first = expected.iter().position(|&t| t == expected[4]).unwrap();
        assert_eq!(stop["choices"][0]["token_ids"].as_array().unwrap().len(), first + 1);
        assert_eq!(stop["choices"][0]["finish_reason"], "stop");
        // The routes beside the completions.
        assert_eq!(server.curl("/health", &[]).status, 200);
        assert_eq!(server.curl("/v1/models", &[]).json()["data"][0]["id"], "tiny-untied@0");
        assert_eq!(server.curl("/version", &[]).json()["version"], env!("CARGO_PKG_VERSION"));
    }
}

#[test]
fn logprobs_come_whole_and_streamed_in_openai_s_shapes() {
    let server = Server::start(&["--model", "tiny-untied"], &[]);
    let body = r#"{"prompt": [5, 6, 7], "max_tokens": 6, "temperature": 0, "ignore_eos": true, "return_token_ids": true, "logprobs": 2"#;
    let whole = server.post("/v1/completions", &format!("{body}}}")).json();
    let choice = &whole["choices"][0];
    let ids: Vec<u64> = choice["token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let lp = &choice["logprobs"];
    let names: Vec<String> = ids.iter().map(|id| format!("token_id:{id}")).collect();
    assert_eq!(lp["tokens"], serde_json::json!(names), "{lp}");
    let token_logprobs: Vec<f64> = lp["token_logprobs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(token_logprobs.len(), 6);
    let mut offset = 0;
    for (i, name) in names.iter().enumerate() {
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert_eq!(top.len(), 2, "greedy: the sampled token is the likeliest of the two: {lp}");
        assert_eq!(top[name].as_f64(), Some(token_logprobs[i]), "{lp}");
        assert!(top.values().all(|v| v.as_f64().unwrap() <= token_logprobs[i] && token_logprobs[i] <= 0.0), "{lp}");
        assert_eq!(lp["text_offset"][i].as_u64(), Some(offset));
        offset += name.len() as u64;
    }
    let stream = server.post("/v1/completions", &format!(r#"{body}, "stream": true}}"#));
    let (_, chunks) = streamed(&stream.body);
    let pieces: Vec<&serde_json::Value> = chunks.iter().map(|c| &c["choices"][0]["logprobs"]).filter(|l| !l.is_null()).collect();
    assert_eq!(pieces.len(), 6, "one chunk per token carries its logprobs");
    for (i, piece) in pieces.iter().enumerate() {
        assert_eq!(piece["tokens"][0], lp["tokens"][i]);
        assert_eq!(piece["token_logprobs"][0], lp["token_logprobs"][i]);
        assert_eq!(piece["top_logprobs"][0], lp["top_logprobs"][i]);
        assert_eq!(piece["text_offset"][0], lp["text_offset"][i], "offsets continue across chunks");
    }
    let none = server.post("/v1/completions", r#"{"prompt": [5, 6, 7], "max_tokens": 2}"#).json();
    assert!(none["choices"][0]["logprobs"].is_null(), "none unless asked: {none}");
}

#[test]
fn bad_requests_get_an_error_naming_the_field_and_the_server_lives_on() {
    let s = Scratch::new("serve-bad-input");
    let server = Server::start(&["--model", "tiny-untied", "--kv-cache-tokens", "256", "--max-body-bytes", "4000"], &[]);
    let long_prompt = format!("[{}]", vec!["1"; 200].join(","));
    let cases: Vec<(String, u16, &str, &str)> = vec![
        ("{\"prompt\": [1, 2".into(), 400, "body", "not valid JSON"),
        ("[1, 2]".into(), 400, "body", "expected a JSON object"),
        (r#"{"prompt": [1], "model": "gpt-4"}"#.into(), 404, "model", "does not exist"),
        (r#"{"prompt": [1], "max_tokens": -3}"#.into(), 400, "max_tokens", "expected an integer from 1 to 256"),
        (r#"{"prompt": [1], "max_tokens": 1e12}"#.into(), 400, "max_tokens", "expected an integer"),
        (r#"{"prompt": [1], "max_tokens": "8"}"#.into(), 400, "max_tokens", "is a string"),
        (r#"{"prompt": []}"#.into(), 400, "prompt", "prompt is empty"),
        (r#"{"prompt": [1, 9999]}"#.into(), 400, "prompt", "prompt[1] is 9999, expected a token id from 0 to 511"),
        (r#"{"prompt": "text"}"#.into(), 400, "prompt", "has no tokenizer"),
        (r#"{"max_tokens": 3}"#.into(), 400, "prompt", "prompt is missing"),
        (r#"{"prompt": [1], "n": 2}"#.into(), 400, "n", "n is 2"),
        (r#"{"prompt": [1], "temperature": 7}"#.into(), 400, "temperature", "from 0 to 2"),
        (r#"{"prompt": [1], "top_p": 0}"#.into(), 400, "top_p", "above 0"),
        (r#"{"prompt": [1], "stop": 5}"#.into(), 400, "stop", "expected a string or an array"),
        (r#"{"prompt": [1], "stream": "yes"}"#.into(), 400, "stream", "expected true or false"),
        (r#"{"prompt": [1], "logprobs": 21}"#.into(), 400, "logprobs", "logprobs is 21, expected an integer from 0 to 20"),
        (r#"{"prompt": [1], "echo": true}"#.into(), 400, "echo", "echo is not supported"),
        (format!(r#"{{"prompt": {long_prompt}, "max_tokens": 100}}"#), 400, "max_tokens", "can never run"),
        (format!(r#"{{"prompt": [1], "pad": "{}"}}"#, "x".repeat(5000)), 413, "body", "--max-body-bytes"),
    ];
    for (body, status, param, message) in &cases {
        let reply = server.post("/v1/completions", body);
        assert_eq!(reply.status, *status, "{body:.80}: {}", reply.body);
        let (got_param, got_message) = reply.error();
        assert_eq!(&got_param, param, "{body:.80}: {}", reply.body);
        assert!(got_message.contains(message), "{body:.80}: {got_message:?} should contain {message:?}");
    }
    let not_utf8 = s.write("latin1.json", b"{\"prompt\": \"caf\xe9\"}");
    let reply = server.curl("/v1/completions", &["--data-binary", &format!("@{not_utf8}")]);
    assert_eq!((reply.status, reply.error().1.contains("not UTF-8")), (400, true), "{}", reply.body);
    let chat = server.post("/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "hi"}]}"#);
    assert_eq!((chat.status, chat.error().0), (400, "messages".to_string()), "a preset has no chat template: {}", chat.body);
    let chat = server.post("/v1/chat/completions", r#"{"messages": [{"content": "hi"}]}"#);
    assert_eq!(chat.error().0, "messages[0].role");
    let chat = server.post("/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}"#);
    assert_eq!((chat.status, chat.error().0), (400, "top_logprobs".to_string()), "top_logprobs needs logprobs: {}", chat.body);
    assert_eq!(server.curl("/v2/nothing", &[]).status, 404);
    assert_eq!(server.curl("/v1/completions", &[]).status, 405);
    // Bodies mutated at random from a good one: every answer is a 200 or a 4xx, never a 5xx or a
    // dropped connection.
    let good = r#"{"model": "tiny-untied@0", "prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0.5, "stop": ["x"], "stream": false}"#;
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..150 {
        let mut bytes = good.as_bytes().to_vec();
        for _ in 0..1 + next() % 4 {
            let at = (next() % bytes.len() as u64) as usize;
            match next() % 3 {
                0 => bytes[at] = (next() % 256) as u8,
                1 => bytes.truncate(at.max(1)),
                _ => bytes.insert(at, b"{}[]\",:-9e\\"[(next() % 11) as usize]),
            }
        }
        let path = s.write("mutated.json", &bytes);
        let reply = server.curl("/v1/completions", &["-H", "Content-Type: application/json", "--data-binary", &format!("@{path}")]);
        assert!(
            reply.status == 200 || (400..500).contains(&reply.status),
            "round {round}: {:?} got {}: {}",
            String::from_utf8_lossy(&bytes),
            reply.status,
            reply.body
        );
        if reply.status != 200 {
            reply.error();
        }
    }
    let still = server.post("/v1/completions", r#"{"prompt": [1, 2, 3], "max_tokens": 2}"#);
    assert_eq!(still.status, 200, "the server still answers: {}", still.body);
}

#[test]
fn the_api_key_guards_every_route_but_health() {
    let server = Server::start(&["--model", "tiny-untied", "--api-key", "s3cret"], &[]);
    for path in ["/v1/models", "/metrics", "/version"] {
        assert_eq!(server.curl(path, &[]).status, 401, "{path}");
        assert_eq!(server.curl(path, &["-H", "Authorization: Bearer wrong"]).status, 401, "{path}");
        assert_eq!(server.curl(path, &["-H", "Authorization: Bearer s3cret"]).status, 200, "{path}");
    }
    let denied = server.post("/v1/completions", r#"{"prompt": [1], "max_tokens": 1}"#);
    assert!(denied.status == 401 && denied.error().1.contains("Authorization"), "{}", denied.body);
    assert_eq!(server.curl("/start_profile", &["-X", "POST"]).status, 401);
    assert_eq!(server.curl("/health", &[]).status, 200);
}

/// A streaming request run by a curl of its own, to be cut off by killing that curl.
fn streaming_client(server: &Server, max_tokens: u32) -> std::process::Child {
    let body = format!(r#"{{"prompt": [1, 2, 3], "max_tokens": {max_tokens}, "ignore_eos": true, "stream": true}}"#);
    Command::new("curl")
        .args(["-sN", "-H", "Content-Type: application/json", "--data-binary", &body, &format!("{}/v1/completions", server.url)])
        .stdout(Stdio::null())
        .spawn()
        .expect("curl starts")
}

#[test]
fn a_full_queue_answers_429_and_a_disconnect_frees_the_request() {
    // Batch size 1: one request runs and the next waits; smollm2-135m is slow enough on the CPU
    // for a long request to stay in flight.
    let server =
        Server::start(&["--model", "smollm2-135m-untied", "--max-batch-size", "1", "--max-queue", "1", "--kv-cache-tokens", "8192"], &[]);
    let mut running = streaming_client(&server, 4000);
    server.eventually("the first request to run", 60, || server.metric("lumen:num_requests_running") == 1.0);
    assert!(server.metric("lumen:kv_cache_used_blocks") >= 1.0);
    let mut waiting = streaming_client(&server, 4000);
    server.eventually("the second request to wait", 30, || server.metric("lumen:num_requests_waiting") == 1.0);
    let refused = server.post("/v1/completions", r#"{"prompt": [1], "max_tokens": 1}"#);
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.error().1.contains("--max-queue"), "{}", refused.body);
    // The waiting client goes away: its request leaves the queue though it never ran.
    waiting.kill().unwrap();
    waiting.wait().unwrap();
    server.eventually("the queue to empty", 30, || server.metric("lumen:num_requests_waiting") == 0.0);
    assert_eq!(server.metric("lumen:num_requests_running"), 1.0);
    // The running client goes away mid-stream: its request ends and its blocks come back.
    running.kill().unwrap();
    running.wait().unwrap();
    server.eventually("the blocks to come back", 30, || {
        server.metric("lumen:num_requests_running") == 0.0 && server.metric("lumen:kv_cache_used_blocks") == 0.0
    });
    assert_eq!(server.metric("lumen:kv_cache_usage_perc"), 0.0);
    let ok = server.post("/v1/completions", r#"{"prompt": [1], "max_tokens": 1}"#);
    assert_eq!(ok.status, 200, "{}", ok.body);
}

#[test]
fn metrics_parse_as_prometheus_text_under_vllm_s_names() {
    let server = Server::start(&["--model", "tiny-untied"], &[]);
    for stream in [false, true] {
        let r =
            server.post("/v1/completions", &format!(r#"{{"prompt": [1, 2, 3], "max_tokens": 5, "ignore_eos": true, "stream": {stream}}}"#));
        assert_eq!(r.status, 200);
    }
    let text = server.curl("/metrics", &[]).body;
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
families = {f.name: f for f in text_string_to_metric_families(sys.stdin.read())}
for name, kind in [("lumen:num_requests_running", "gauge"), ("lumen:num_requests_waiting", "gauge"),
                   ("lumen:kv_cache_usage_perc", "gauge"), ("lumen:prompt_tokens", "counter"),
                   ("lumen:generation_tokens", "counter"), ("lumen:num_preemptions", "counter"),
                   ("lumen:time_to_first_token_seconds", "histogram"), ("lumen:inter_token_latency_seconds", "histogram"),
                   ("lumen:e2e_request_latency_seconds", "histogram"), ("lumen:request_queue_time_seconds", "histogram"),
                   ("lumen:request_prefill_time_seconds", "histogram"), ("lumen:request_decode_time_seconds", "histogram"),
                   ("lumen:iteration_tokens_total", "histogram")]:
    assert name in families, name + " missing: " + ", ".join(sorted(families))
    assert families[name].type == kind, (name, families[name].type)
def value(name, suffix=""):
    return sum(s.value for s in families[name].samples if s.name == name + suffix)
assert value("lumen:prompt_tokens", "_total") == 6, value("lumen:prompt_tokens", "_total")
assert value("lumen:generation_tokens", "_total") == 10
assert value("lumen:e2e_request_latency_seconds", "_count") == 2
assert value("lumen:inter_token_latency_seconds", "_count") == 8
assert value("lumen:iteration_tokens_total", "_count") >= 5
print("ok")
"#;
    let mut python =
        Command::new("python3").args(["-c", script]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(python.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{text}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn profile_routes_write_a_trace_of_the_window_and_refuse_a_second_start() {
    let s = Scratch::new("serve-profile-routes");
    let dir = s.path("traces");
    std::fs::create_dir_all(&dir).unwrap();
    let server = Server::start(&["--model", "tiny-untied"], &[]);
    let started = server.post("/start_profile", &format!(r#"{{"output_dir": "{dir}"}}"#));
    assert_eq!(started.status, 200, "{}", started.body);
    let again = server.post("/start_profile", "{}");
    assert_eq!(again.status, 409, "{}", again.body);
    let bad = server.post("/start_profile", r#"{"num_steps": -1}"#);
    assert_eq!((bad.status, bad.error().0), (400, "num_steps".to_string()), "{}", bad.body);
    let r = server.post("/v1/completions", r#"{"prompt": [1, 2, 3], "max_tokens": 8, "ignore_eos": true}"#);
    assert_eq!(r.status, 200);
    let stopped = server.post("/stop_profile", "");
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    let stopped = stopped.json();
    assert_eq!(stopped["iterations"], 8, "{stopped}");
    let trace = stopped["trace"].as_str().unwrap().to_string();
    assert!(trace.starts_with(&dir), "{trace}");
    assert_eq!(server.post("/stop_profile", "").status, 409);
    let bad = server.post("/start_profile", r#"{"output_dir": "/nonexistent/dir"}"#);
    assert_eq!((bad.status, bad.error().0), (400, "output_dir".to_string()), "{}", bad.body);
    let analyzed = lumen(&["analyze", &trace]);
    assert_eq!(analyzed.code, Some(0), "{}", analyzed.stderr);
    let info = lumen(&["trace", "info", &trace]);
    assert!(info.stdout.contains("iterations"), "{}", info.stdout);
    let requests = lumen_trace::store::read_trace(std::path::Path::new(&trace)).unwrap().requests;
    let lengths: Vec<_> = requests.iter().map(|r| (r.input_len, r.output_len, r.first_token_ns.is_some())).collect();
    assert_eq!(lengths, [(3, 8, true)], "the window's one request");
}

#[test]
fn environment_windows_count_from_server_start_and_sigterm_finishes_the_trace() {
    let s = Scratch::new("serve-env-window");
    let trace = s.path("window.lumen");
    let server = Server::start(&["--model", "tiny-untied"], &[("LUMEN_PROFILE_START_STOP", "20-40"), ("LUMEN_TRACE", &trace)]);
    let bench = lumen(&[
        "bench",
        "serve",
        "--base-url",
        &server.url,
        "--random-input-len",
        "16",
        "--random-output-len",
        "12",
        "--num-prompts",
        "32",
        "--max-concurrency",
        "4",
        "--ignore-eos",
    ]);
    assert_eq!(bench.code, Some(0), "{}", bench.stderr);
    assert!(bench.stdout.contains("Successful requests:                     32"), "{}", bench.stdout);
    let (code, log) = server.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{log}");
    let rows = lumen_trace::store::read_trace(std::path::Path::new(&trace)).unwrap().iterations;
    assert_eq!(rows.iter().map(|r| r.iter).collect::<Vec<_>>(), (20..=40).collect::<Vec<_>>(), "{log}");
    let requests = lumen_trace::store::read_trace(std::path::Path::new(&trace)).unwrap().requests;
    let (window_start, window_end) = (rows[0].start_ns, rows[rows.len() - 1].end_ns);
    assert!(!requests.is_empty(), "4-way decoding of 12 tokens ends requests in and before the window");
    for r in &requests {
        assert_eq!((r.input_len, r.output_len), (16, 12), "{r:?}");
        assert!((window_start..=window_end).contains(&r.end_ns), "{r:?} ended outside the window {window_start}..{window_end}");
    }
    assert_eq!(lumen(&["analyze", &trace]).code, Some(0));
}

#[test]
fn sigterm_aborts_what_outlives_the_shutdown_timeout_and_exits_0() {
    let server = Server::start(&["--model", "smollm2-135m-untied", "--shutdown-timeout", "1", "--kv-cache-tokens", "8192"], &[]);
    let body = r#"{"prompt": [1, 2, 3], "max_tokens": 4000, "ignore_eos": true, "stream": true}"#;
    let client = Command::new("curl")
        .args(["-sN", "-H", "Content-Type: application/json", "--data-binary", body, &format!("{}/v1/completions", server.url)])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    server.eventually("the request to run", 60, || server.metric("lumen:num_requests_running") == 1.0);
    let started = std::time::Instant::now();
    let (code, log) = server.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{log}");
    assert!(started.elapsed().as_secs() < 10, "stopped in {:?}", started.elapsed());
    assert!(log.contains("aborting the requests still running"), "{log}");
    let out = client.wait_with_output().unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("\"finish_reason\":\"abort\"") && body.ends_with("data: [DONE]\n\n"),
        "the stream ends properly: {}",
        &body[body.len().saturating_sub(300)..]
    );
}

#[test]
fn one_sigint_stops_bench_serve_closes_the_profile_window_and_frees_the_server() {
    let s = Scratch::new("bench-serve-sigint");
    let dir = s.path("traces");
    std::fs::create_dir_all(&dir).unwrap();
    let server = Server::start(&["--model", "tiny-untied", "--profile-dir", &dir], &[]);
    let mut bench = Command::new(common::lumen_bin())
        .args(["bench", "serve", "--base-url", &server.url, "--random-input-len", "16", "--random-output-len", "1000"])
        .args(["--num-prompts", "64", "--max-concurrency", "8", "--ignore-eos", "--profile"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    server.eventually("requests to run", 60, || server.metric("lumen:num_requests_running") >= 1.0);
    let signalled = std::time::Instant::now();
    unsafe { libc::kill(bench.id() as i32, libc::SIGINT) };
    while bench.try_wait().unwrap().is_none() && signalled.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = bench.kill();
    let out = bench.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + libc::SIGINT), "one SIGINT ends bench serve: {stderr}");
    assert!(signalled.elapsed().as_secs() < 10, "stopped after {:?}", signalled.elapsed());
    assert!(stderr.contains("/stop_profile") && stderr.contains("SIGINT"), "{stderr}");
    server.eventually("the dropped requests to be aborted", 10, || {
        server.metric("lumen:num_requests_running") == 0.0 && server.metric("lumen:kv_cache_used_blocks") == 0.0
    });
    let traces: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(Result::ok).collect();
    assert_eq!(traces.len(), 1, "the window's trace is written");
    assert_eq!(lumen(&["analyze", traces[0].path().to_str().unwrap()]).code, Some(0));
}
