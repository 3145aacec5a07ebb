//! The JSON the OpenAI API answers with: whole completions and chat completions, their streamed
//! chunks, and usage.

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

    /// The whole answer.
    pub fn complete(&self, text: &str, finish_reason: &str, token_ids: Option<&[u32]>, usage: &Usage) -> Value {
        let mut choice = match self.endpoint {
            Endpoint::Completions => json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason}),
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
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
    pub fn chunk(&self, text: &str, token_ids: Option<&[u32]>, finish_reason: Option<&str>) -> Value {
        let mut choice = match self.endpoint {
            Endpoint::Completions => json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason}),
            Endpoint::Chat => json!({"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": finish_reason}),
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
