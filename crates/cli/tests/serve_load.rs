//! `lumen serve` under load with hostile clients mixed in: `lumen bench serve` at 64-way
//! concurrency while 1,000 malformed, oversized, slow-loris, unauthorised and cut-off requests
//! arrive on raw sockets. Every good request completes with its exact token count, every bad one
//! gets its 4xx, and afterwards no request runs or waits and the KV cache is empty.

mod common;

use common::server::Server;
use common::{lumen, Scratch};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Sends `raw` (a whole HTTP request, or the start of one) and returns the reply's status code,
/// or 0 when the connection closed without one.
fn send_raw(addr: &str, raw: &[u8], pause_after: Option<usize>) -> u16 {
    let mut stream = TcpStream::connect(addr).expect("the server accepts connections");
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    match pause_after {
        Some(n) => {
            // A slow-loris body: part of it, then nothing until the server gives up.
            stream.write_all(&raw[..n]).unwrap();
        }
        None => stream.write_all(raw).unwrap(),
    }
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn post(path: &str, body: &[u8], extra_headers: &str) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// Opens a streaming request, reads the first bytes of its reply and hangs up mid-stream.
fn cut_off(addr: &str) -> bool {
    let body = br#"{"prompt": [1, 2, 3], "max_tokens": 400, "ignore_eos": true, "stream": true}"#;
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream.write_all(&post("/v1/completions", body, "Authorization: Bearer k\r\n")).unwrap();
    let mut first = [0u8; 64];
    let n = stream.read(&mut first).unwrap_or(0);
    String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200")
}

#[test]
fn good_requests_complete_exactly_while_hostile_ones_get_their_4xx() {
    let s = Scratch::new("serve-load");
    let server = Server::start(
        &["--model", "tiny-untied", "--api-key", "k", "--max-body-bytes", "4096", "--body-timeout", "1", "--max-batch-size", "64"],
        &[],
    );
    let addr = server.url.trim_start_matches("http://").to_string();
    let hostile: Vec<(Vec<u8>, Option<usize>, u16)> = {
        let auth = "Authorization: Bearer k\r\n";
        let mut cases = Vec::new();
        for i in 0..1000 {
            let case = match i % 10 {
                0 => (post("/v1/completions", b"{\"prompt\": [1, 2", auth), None, 400),
                1 => (post("/v1/completions", br#"{"prompt": [1], "max_tokens": -5}"#, auth), None, 400),
                2 => (post("/v1/completions", br#"{"prompt": "x", "max_tokens": 2}"#, auth), None, 400),
                3 => (post("/v1/completions", b"{\"prompt\": \"\xff\xfe\"}", auth), None, 400),
                4 => (post("/v1/completions", &vec![b' '; 5000], auth), None, 413),
                5 => (post("/v1/completions", br#"{"prompt": [1], "max_tokens": 2}"#, ""), None, 401),
                6 => (post("/v1/completions", br#"{"prompt": [1], "max_tokens": 2}"#, "Authorization: Bearer nope\r\n"), None, 401),
                7 => (post("/v1/chat/completions", br#"{"messages": "hi"}"#, auth), None, 400),
                8 => (post("/v1/completions", br#"{"prompt": [1], "model": "other"}"#, auth), None, 404),
                _ if i % 100 == 9 => {
                    let raw = post("/v1/completions", br#"{"prompt": [1, 2, 3], "max_tokens": 2}"#, auth);
                    let cut = raw.len() - 10;
                    (raw, Some(cut), 408)
                }
                _ => (Vec::new(), None, 0),
            };
            cases.push(case);
        }
        cases
    };
    let attackers: Vec<_> = hostile
        .chunks(100)
        .map(|chunk| {
            let (addr, chunk) = (addr.clone(), chunk.to_vec());
            std::thread::spawn(move || {
                let mut cut_offs = 0;
                for (raw, pause, expected) in chunk {
                    if raw.is_empty() {
                        cut_offs += usize::from(cut_off(&addr));
                        continue;
                    }
                    let got = send_raw(&addr, &raw, pause);
                    assert_eq!(got, expected, "{}", String::from_utf8_lossy(&raw[raw.len().saturating_sub(120)..]));
                }
                cut_offs
            })
        })
        .collect();
    let result = s.path("result.json");
    let bench = lumen(&[
        "bench",
        "serve",
        "--base-url",
        &server.url,
        "--api-key",
        "k",
        "--random-input-len",
        "24",
        "--random-output-len",
        "16",
        "--num-prompts",
        "320",
        "--max-concurrency",
        "64",
        "--ignore-eos",
        "--save-result",
        "--result-dir",
        &s.path(""),
        "--result-filename",
        "result.json",
    ]);
    assert_eq!(bench.code, Some(0), "{}", bench.stderr);
    let cut_offs: usize = attackers.into_iter().map(|a| a.join().expect("every hostile request got its 4xx")).sum();
    assert_eq!(cut_offs, 90, "every cut-off stream had started");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_eq!(report["completed"], 320, "{}", bench.stdout);
    let lens = report["output_lens"].as_array().unwrap();
    assert!(lens.iter().all(|n| n == 16), "every good request has exactly 16 tokens: {lens:?}");
    let authorized = ["-H", "Authorization: Bearer k"];
    let metric = |name: &str| {
        let text = server.curl("/metrics", &authorized).body;
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse::<f64>().ok()).unwrap()
    };
    server.eventually("the cut-off requests to end", 30, || {
        metric("lumen:num_requests_running") == 0.0
            && metric("lumen:num_requests_waiting") == 0.0
            && metric("lumen:kv_cache_used_blocks") == 0.0
    });
    assert_eq!(server.curl("/health", &[]).status, 200);
}
