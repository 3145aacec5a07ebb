//! The JSON the OpenAI API answers with: whole completions and chat completions, their streamed
//! chunks, usage, and log-probabilities in each endpoint's shape.

use crate::openai::Endpoint;
use serde_json::{json, Value};

/// What every reply object of one request shares.
pub struct ReplyHeader {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
}

pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl Usage {
    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// A token as log-probability lists name it: its text and bytes, or `token_id:N` and no bytes
/// for a model without a tokenizer (vLLM's spelling).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenName {
    pub text: String,
    pub bytes: Option<Vec<u8>>,
}

/// A generated token's log-probability and its likeliest alternatives', named.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedLogprobs {
    pub token: TokenName,
    pub logprob: f32,
    pub top: Vec<(TokenName, f32)>,
}

/// The `logprobs` object of a choice holding `tokens`. Completions have OpenAI's legacy lists
/// (`tokens`, `token_logprobs`, `top_logprobs` — the alternatives and the sampled token, keyed by
/// text —, and `text_offset`, counted in characters from `text_offset`); chat has `content`, one
/// object per token with its bytes and `top_logprobs`.
pub fn logprobs_json(endpoint: Endpoint, tokens: &[NamedLogprobs], text_offset: usize) -> Value {
    match endpoint {
        Endpoint::Completions => {
            let mut offsets = Vec::with_capacity(tokens.len());
            let mut offset = text_offset;
            for t in tokens {
                offsets.push(offset);
                offset += t.token.text.chars().count();
            }
            let top: Vec<Value> = tokens
                .iter()
                .map(|t| {
                    let mut alternatives = serde_json::Map::new();
                    for (name, logprob) in &t.top {
                        alternatives.insert(name.text.clone(), json!(logprob));
                    }
                    alternatives.entry(t.token.text.clone()).or_insert_with(|| json!(t.logprob));
                    Value::Object(alternatives)
                })
                .collect();
            json!({
                "tokens": tokens.iter().map(|t| t.token.text.as_str()).collect::<Vec<_>>(),
                "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                "top_logprobs": top,
                "text_offset": offsets,
            })
        }
        Endpoint::Chat => {
            let entry = |name: &TokenName, logprob: f32| json!({"token": name.text, "logprob": logprob, "bytes": name.bytes});
            let content: Vec<Value> = tokens
                .iter()
                .map(|t| {
                    let mut e = entry(&t.token, t.logprob);
                    e["top_logprobs"] = t.top.iter().map(|(name, lp)| entry(name, *lp)).collect();
                    e
                })
                .collect();
            json!({ "content": content })
        }
    }
}

impl ReplyHeader {
    pub fn new(endpoint: Endpoint, request_id: u64, model: &str) -> Self {
        let prefix = match endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::Chat => "chatcmpl",
        };
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        ReplyHeader { endpoint, id: format!("{prefix}-{request_id}"), created, model: model.to_string() }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }

    fn wrap(&self, chunk: bool, choices: Vec<Value>) -> Value {
        json!({"id": self.id, "object": self.object(chunk), "created": self.created, "model": self.model, "choices": choices})
    }

    /// The whole answer; `logprobs` is null unless the request asked for them.
    pub fn complete(&self, text: &str, finish_reason: &str, token_ids: Option<&[u32]>, logprobs: Value, usage: &Usage) -> Value {
        let mut choice = match self.endpoint {
            Endpoint::Completions => json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}),
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }),
        };
        if let Some(ids) = token_ids {
            choice["token_ids"] = json!(ids);
        }
        let mut reply = self.wrap(false, vec![choice]);
        reply["usage"] = usage.json();
        reply
    }

    /// The chat stream's opening chunk, which gives the role.
    pub fn role_chunk(&self) -> Value {
        self.wrap(true, vec![json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})])
    }

    /// A streamed piece of the answer; the last carries the finish reason.
    pub fn chunk(&self, text: &str, token_ids: Option<&[u32]>, logprobs: Value, finish_reason: Option<&str>) -> Value {
        let mut choice = match self.endpoint {
            Endpoint::Completions => json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}),
            Endpoint::Chat => json!({"index": 0, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": finish_reason}),
        };
        if let Some(ids) = token_ids {
            choice["token_ids"] = json!(ids);
        }
        self.wrap(true, vec![choice])
    }

    /// The usage chunk `stream_options.include_usage` asks for: no choices.
    pub fn usage_chunk(&self, usage: &Usage) -> Value {
        let mut reply = self.wrap(true, Vec::new());
        reply["usage"] = usage.json();
        reply
    }
}
