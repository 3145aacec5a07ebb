//! One request to an OpenAI-compatible server, streamed, timed from the client's side: the time
//! to the first chunk that carries text, the gaps between such chunks, the whole latency, and
//! the token counts from the server's `usage` (or, where it sends none, the chunks counted).

use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ApiEndpoint {
    Completions,
    Chat,
}

impl ApiEndpoint {
    pub fn parse(path: &str) -> anyhow::Result<Self> {
        match path {
            "/v1/completions" => Ok(ApiEndpoint::Completions),
            "/v1/chat/completions" => Ok(ApiEndpoint::Chat),
            other => anyhow::bail!("--endpoint {other}: expected /v1/completions or /v1/chat/completions"),
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            ApiEndpoint::Completions => "/v1/completions",
            ApiEndpoint::Chat => "/v1/chat/completions",
        }
    }
}

/// A prompt as the endpoint takes it.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptBody {
    Ids(Vec<u32>),
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BenchRequest {
    pub prompt: PromptBody,
    /// The prompt's length in tokens as the dataset gives it.
    pub input_len: usize,
    pub output_len: u32,
}

/// What one request did, as the client saw it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub success: bool,
    pub error: String,
    /// Seconds from sending to the first chunk with text.
    pub ttft_s: f64,
    /// Seconds between consecutive chunks with text.
    pub itl_s: Vec<f64>,
    pub latency_s: f64,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub generated_text: String,
}

/// How requests are sent.
pub struct Client {
    http: reqwest::Client,
    pub base_url: String,
    pub endpoint: ApiEndpoint,
    pub model: String,
    pub ignore_eos: bool,
    pub api_key: Option<String>,
}

impl Client {
    pub fn new(base_url: &str, endpoint: ApiEndpoint, model: String, ignore_eos: bool, api_key: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().build()?;
        Ok(Client { http, base_url: base_url.trim_end_matches('/').to_string(), endpoint, model, ignore_eos, api_key })
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.post(format!("{}{path}", self.base_url));
        match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// The body of `r` for this endpoint: greedy, streamed, with usage.
    pub fn body(&self, r: &BenchRequest) -> serde_json::Value {
        let mut body = serde_json::json!({
            "model": self.model,
            "temperature": 0.0,
            "stream": true,
            "stream_options": {"include_usage": true},
            "ignore_eos": self.ignore_eos,
        });
        let text = |p: &PromptBody| match p {
            PromptBody::Text(t) => t.clone(),
            PromptBody::Ids(ids) => ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" "),
        };
        match self.endpoint {
            ApiEndpoint::Completions => {
                body["prompt"] = match &r.prompt {
                    PromptBody::Ids(ids) => serde_json::json!(ids),
                    PromptBody::Text(t) => serde_json::json!(t),
                };
                body["max_tokens"] = r.output_len.into();
            }
            ApiEndpoint::Chat => {
                body["messages"] = serde_json::json!([{"role": "user", "content": text(&r.prompt)}]);
                body["max_completion_tokens"] = r.output_len.into();
            }
        }
        body
    }

    /// Sends `r` and reads its stream to the end.
    pub async fn send(&self, r: &BenchRequest) -> Outcome {
        let started = Instant::now();
        let mut outcome = Outcome { prompt_tokens: r.input_len, ..Outcome::default() };
        let response = match self.post(self.endpoint.path()).json(&self.body(r)).send().await {
            Ok(response) => response,
            Err(e) => return Outcome { error: format!("request failed: {e}"), ..outcome },
        };
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Outcome { error: format!("HTTP {status}: {text}"), ..outcome };
        }
        let mut events = SseReader::default();
        let mut response = response;
        let mut last = started;
        let mut chunks = 0;
        let mut usage_tokens = None;
        loop {
            let bytes = match response.chunk().await {
                Ok(Some(bytes)) => bytes,
                Ok(None) => break,
                Err(e) => return Outcome { error: format!("the stream broke: {e}"), ..outcome },
            };
            for data in events.push(&bytes) {
                if data == "[DONE]" {
                    continue;
                }
                let chunk: serde_json::Value = match serde_json::from_str(&data) {
                    Ok(v) => v,
                    Err(e) => return Outcome { error: format!("a chunk is not JSON ({e}): {data}"), ..outcome },
                };
                if let Some(error) = chunk.get("error") {
                    return Outcome { error: format!("the server ended the stream with an error: {error}"), ..outcome };
                }
                if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
                    let count = |key: &str| usage.get(key).and_then(serde_json::Value::as_u64).map(|n| n as usize);
                    usage_tokens = count("completion_tokens");
                    outcome.prompt_tokens = count("prompt_tokens").unwrap_or(outcome.prompt_tokens);
                }
                let choice = &chunk["choices"][0];
                let text = choice["text"].as_str().or_else(|| choice["delta"]["content"].as_str()).unwrap_or("");
                if text.is_empty() {
                    continue;
                }
                let now = Instant::now();
                if chunks == 0 {
                    outcome.ttft_s = now.duration_since(started).as_secs_f64();
                } else {
                    outcome.itl_s.push(now.duration_since(last).as_secs_f64());
                }
                last = now;
                chunks += 1;
                outcome.generated_text.push_str(text);
            }
        }
        outcome.latency_s = started.elapsed().as_secs_f64();
        outcome.output_tokens = usage_tokens.unwrap_or(chunks);
        outcome.success = chunks > 0 || outcome.output_tokens > 0;
        if !outcome.success {
            outcome.error = "the stream ended without any output".into();
        }
        outcome
    }

    /// The first model the server lists at `/v1/models`.
    pub async fn served_model(&self) -> anyhow::Result<String> {
        let mut request = self.http.get(format!("{}/v1/models", self.base_url));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let reply: serde_json::Value = request.send().await?.error_for_status()?.json().await?;
        match reply["data"][0]["id"].as_str() {
            Some(id) => Ok(id.to_string()),
            None => anyhow::bail!("{}/v1/models lists no model; give --model", self.base_url),
        }
    }

    /// POSTs `path` (the profiling routes) and returns the reply's body, or what went wrong.
    pub async fn post_empty(&self, path: &str) -> anyhow::Result<String> {
        let response = self.post(path).json(&serde_json::json!({})).send().await?;
        let status = response.status();
        let text = response.text().await?;
        anyhow::ensure!(status.is_success(), "POST {path}: HTTP {status}: {text}");
        Ok(text)
    }
}

/// Splits a server-sent-event stream into the `data:` payloads of its events.
#[derive(Default)]
pub struct SseReader {
    pending: Vec<u8>,
}

impl SseReader {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.pending.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim_start).collect();
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_at_blank_lines_whatever_the_chunking() {
        let stream = b"data: {\"a\":1}\n\n: comment\n\ndata: [DONE]\n\n";
        for cut in 0..stream.len() {
            let mut r = SseReader::default();
            let mut got = r.push(&stream[..cut]);
            got.extend(r.push(&stream[cut..]));
            assert_eq!(got, ["{\"a\":1}", "[DONE]"], "cut at {cut}");
        }
    }

    #[test]
    fn bodies_follow_the_endpoint() {
        let r = BenchRequest { prompt: PromptBody::Ids(vec![1, 2]), input_len: 2, output_len: 5 };
        let c = Client::new("http://127.0.0.1:1/", ApiEndpoint::Completions, "m".into(), true, None).unwrap();
        let b = c.body(&r);
        assert_eq!(
            (b["prompt"].clone(), b["max_tokens"].clone(), b["ignore_eos"].clone()),
            (serde_json::json!([1, 2]), 5.into(), true.into())
        );
        let c = Client::new("http://127.0.0.1:1", ApiEndpoint::Chat, "m".into(), false, None).unwrap();
        let b = c.body(&r);
        assert_eq!(b["messages"][0]["content"], "1 2");
        assert_eq!(b["max_completion_tokens"], 5);
        assert!(ApiEndpoint::parse("/v1/embeddings").unwrap_err().to_string().contains("expected /v1/completions"));
    }
}
