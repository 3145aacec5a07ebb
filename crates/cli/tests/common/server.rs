//! A `lumen serve` process for end-to-end tests: started on a port the system picks, talked to
//! with curl, stopped by a signal, its log kept.

use super::lumen_bin;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    pub url: String,
    log: Arc<Mutex<String>>,
}

/// A reply: status and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The OpenAI error object's `param` and `message`, checking its shape.
    pub fn error(&self) -> (String, String) {
        let v = self.json();
        let e = &v["error"];
        assert!(e["type"].is_string() && e["code"].as_u64() == Some(u64::from(self.status)), "not an error object: {}", self.body);
        (e["param"].as_str().unwrap_or("").to_string(), e["message"].as_str().unwrap_or_default().to_string())
    }
}

impl Server {
    /// Starts `lumen serve ARGS --port 0` with `env` and waits (a minute at most) until it listens.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_under(&[], args, env)
    }

    /// [`Server::start`] under `lumen WRAPPER... serve ARGS`, e.g. `profile -o T -- lumen`.
    pub fn start_under(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(lumen_bin())
            .args(wrapper)
            .arg("serve")
            .args(args)
            .args(["--port", "0"])
            .envs(env.iter().copied())
            .env_remove("LUMEN_MODEL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("lumen serve starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split(" on ").nth(1).filter(|_| line.contains("serving")) {
                    let _ = tx.send(url.to_string());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("lumen serve did not start: {}", log.lock().unwrap()));
        Server { child, url, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Runs curl on `path` with `args`; returns the status and body.
    pub fn curl(&self, path: &str, args: &[&str]) -> Reply {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "120", "-o", "-", "-w", "\n%{http_code}"])
            .args(args)
            .arg(format!("{}{path}", self.url))
            .output()
            .expect("curl runs (scripts/setup.sh installs it)");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        Reply { status: status.trim().parse().unwrap_or(0), body: body.to_string() }
    }

    /// POSTs the JSON `body` to `path`.
    pub fn post(&self, path: &str, body: &str) -> Reply {
        self.curl(path, &["-H", "Content-Type: application/json", "--data-binary", body])
    }

    /// The value of an unlabelled-by-reason sample in /metrics, read with a plain split (the
    /// Prometheus parser checks the format elsewhere).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.curl("/metrics", &[]).body;
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    }

    /// Waits until `ready` holds, for at most `seconds`.
    pub fn eventually(&self, what: &str, seconds: u64, ready: impl Fn() -> bool) {
        let start = Instant::now();
        while !ready() {
            assert!(start.elapsed() < Duration::from_secs(seconds), "timed out waiting for {what}; server log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` and waits for the exit code (a minute at most).
    pub fn stop(mut self, signal: i32) -> (Option<i32>, String) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50));
                return (status.code(), self.log());
            }
            assert!(start.elapsed() < Duration::from_secs(60), "lumen serve did not stop: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
