//! OpenAI request bodies for `/v1/completions` and `/v1/chat/completions`, read into an engine
//! request and the reply's options. Every field is checked where it is read, and a bad one is a
//! 4xx naming it. Besides OpenAI's fields, vLLM's `top_k`, `ignore_eos` and `stop_token_ids` are
//! taken, and `return_token_ids` adds each choice's token ids to the reply. Log-probabilities
//! (`logprobs` on completions; `logprobs` and `top_logprobs` on chat) are those of the model's
//! raw distribution, up to 20 alternatives per token, as vLLM gives them.

use crate::error::ApiError;
use crate::fields::{json_kind, token_id_list, Fields};
use axum::http::StatusCode;
use lumen_engine::{Request, RequestLimits, SamplingParams, StopConditions};
use lumen_model::chat::{chat_prompt_ids, text_prompt_ids};
use lumen_model::Model;
use lumen_tokenizer::ChatMessage;
use lumen_trace::instrument::{span, Category};
use serde_json::Value;

/// OpenAI's default `max_tokens` for completions.
const DEFAULT_COMPLETION_TOKENS: usize = 16;
/// Most stop strings a request may give, as in the OpenAI API.
const MAX_STOP_STRINGS: usize = 4;
/// Most alternatives per token a request may ask log-probabilities of (vLLM's default limit).
const MAX_TOP_LOGPROBS: i64 = 20;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// A generation request as the server runs it.
#[derive(Debug)]
pub struct Generation {
    pub endpoint: Endpoint,
    pub request: Request,
    pub stream: bool,
    pub include_usage: bool,
    pub stop_strings: Vec<String>,
    pub return_token_ids: bool,
}

/// The model being served, under the name clients use.
pub struct Served<'a> {
    pub name: &'a str,
    pub model: &'a Model,
    pub limits: RequestLimits,
}

pub fn parse(endpoint: Endpoint, body: &Value, served: &Served) -> Result<Generation, ApiError> {
    let f = Fields::of(body)?;
    if let Some(name) = f.str("model")? {
        if name != served.name {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("model {name:?} does not exist; this server serves {:?}", served.name),
            )
            .with_param("model"));
        }
    }
    f.integer("n", 1, 1)?;
    let logprobs = logprobs(&f, endpoint)?;
    if f.bool("echo")? == Some(true) {
        return Err(ApiError::field("echo", "echo is not supported: the engine returns the completion only, without the prompt"));
    }
    let limits = served.limits;
    let vocab = limits.vocab_size;
    let longest = limits.max_seq_len as i64;
    let max_tokens = match endpoint {
        Endpoint::Completions => f.integer("max_tokens", 1, longest)?,
        Endpoint::Chat => match f.integer("max_completion_tokens", 1, longest)? {
            Some(n) => Some(n),
            None => f.integer("max_tokens", 1, longest)?,
        },
    };
    let temperature = f.number("temperature", 0.0, 2.0)?.unwrap_or(1.0);
    let top_p = f.number("top_p", 0.0, 1.0)?.unwrap_or(1.0);
    if top_p <= 0.0 {
        return Err(ApiError::field("top_p", format!("top_p is {top_p}, expected a number above 0 and at most 1")));
    }
    let top_k = f.integer("top_k", -1, vocab as i64)?.unwrap_or(-1);
    let seed = f.integer("seed", 0, i64::MAX)?.unwrap_or(0);
    let stop_strings = stop_strings(&f)?;
    let stop_ids = f.token_ids("stop_token_ids", vocab)?.unwrap_or_default();
    let ignore_eos = f.bool("ignore_eos")?.unwrap_or(false);
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(options @ Value::Object(_)) => {
            Fields::of(options)?.bool("include_usage").map_err(|e| e.with_param("stream_options.include_usage"))?.unwrap_or(false)
        }
        Some(other) => {
            return Err(ApiError::field("stream_options", format!("stream_options is {}, expected an object", json_kind(other))))
        }
    };
    let return_token_ids = f.bool("return_token_ids")?.unwrap_or(false);
    let prompt = {
        let _s = span(Category::Api, "tokenize");
        match endpoint {
            Endpoint::Completions => completion_prompt(&f, served)?,
            Endpoint::Chat => chat_prompt(&f, served)?,
        }
    };
    let max_tokens = match (max_tokens, endpoint) {
        (Some(n), _) => n as usize,
        (None, Endpoint::Completions) => DEFAULT_COMPLETION_TOKENS,
        (None, Endpoint::Chat) => limits.max_seq_len.saturating_sub(prompt.len()).max(1),
    };
    let request = Request {
        prompt,
        sampling: SamplingParams {
            temperature: temperature as f32,
            top_k: top_k.max(0) as usize,
            top_p: top_p as f32,
            seed: seed as u64,
            logprobs,
        },
        stop: StopConditions { max_tokens, stop_ids, ignore_eos },
    };
    if let Some(why) = limits.problem(&request) {
        let field = if request.prompt.is_empty() { "prompt" } else { "max_tokens" };
        return Err(ApiError::field(field, format!("this request can never run: {why}")));
    }
    Ok(Generation { endpoint, request, stream, include_usage, stop_strings, return_token_ids })
}

/// How many alternatives per token the reply gives log-probabilities of; `None` for no
/// log-probabilities. Completions take `logprobs: N`; chat takes `logprobs: true` with
/// `top_logprobs: N`, which needs it.
fn logprobs(f: &Fields, endpoint: Endpoint) -> Result<Option<usize>, ApiError> {
    match endpoint {
        Endpoint::Completions => Ok(f.integer("logprobs", 0, MAX_TOP_LOGPROBS)?.map(|n| n as usize)),
        Endpoint::Chat => {
            let top = f.integer("top_logprobs", 0, MAX_TOP_LOGPROBS)?;
            match (f.bool("logprobs")?.unwrap_or(false), top) {
                (true, top) => Ok(Some(top.unwrap_or(0) as usize)),
                (false, Some(_)) => Err(ApiError::field("top_logprobs", "top_logprobs needs logprobs set to true")),
                (false, None) => Ok(None),
            }
        }
    }
}

fn stop_strings(f: &Fields) -> Result<Vec<String>, ApiError> {
    let list = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(ApiError::field("stop", format!("stop[{i}] is {}, expected a string", json_kind(other)))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ApiError::field("stop", format!("stop is {}, expected a string or an array of strings", json_kind(other))))
        }
    };
    if list.len() > MAX_STOP_STRINGS {
        return Err(ApiError::field("stop", format!("stop has {} strings, expected at most {MAX_STOP_STRINGS}", list.len())));
    }
    if list.iter().any(String::is_empty) {
        return Err(ApiError::field("stop", "stop holds an empty string, expected non-empty stop strings"));
    }
    Ok(list)
}

/// `prompt`: text, token ids, or a list holding one of either.
fn completion_prompt(f: &Fields, served: &Served) -> Result<Vec<u32>, ApiError> {
    let vocab = served.limits.vocab_size;
    let prompt = f.get("prompt").ok_or_else(|| ApiError::field("prompt", "prompt is missing, expected text or a list of token ids"))?;
    let ids = match prompt {
        Value::String(text) => encode_text(served, text)?,
        Value::Array(items) => match items.first() {
            None => Vec::new(),
            Some(Value::Number(_)) => token_id_list("prompt", items, vocab)?,
            Some(_) if items.len() > 1 => {
                return Err(ApiError::field("prompt", format!("prompt holds {} prompts, expected one per request", items.len())))
            }
            Some(Value::String(text)) => encode_text(served, text)?,
            Some(Value::Array(ids)) => token_id_list("prompt[0]", ids, vocab)?,
            Some(other) => return Err(ApiError::field("prompt", format!("prompt[0] is {}, expected text or token ids", json_kind(other)))),
        },
        other => return Err(ApiError::field("prompt", format!("prompt is {}, expected text or a list of token ids", json_kind(other)))),
    };
    if ids.is_empty() {
        return Err(ApiError::field("prompt", "prompt is empty, expected at least one token"));
    }
    Ok(ids)
}

fn encode_text(served: &Served, text: &str) -> Result<Vec<u32>, ApiError> {
    text_prompt_ids(served.model, text).map_err(|e| ApiError::field("prompt", format!("{e:#}; give the prompt as a list of token ids")))
}

/// `messages`, rendered with the model's chat template.
fn chat_prompt(f: &Fields, served: &Served) -> Result<Vec<u32>, ApiError> {
    let missing = || ApiError::field("messages", "messages is missing, expected a non-empty array of {role, content} objects");
    let messages = match f.get("messages").ok_or_else(missing)? {
        Value::Array(items) if !items.is_empty() => {
            items.iter().enumerate().map(|(i, m)| chat_message(i, m)).collect::<Result<Vec<_>, _>>()?
        }
        Value::Array(_) => return Err(missing()),
        other => return Err(ApiError::field("messages", format!("messages is {}, expected an array", json_kind(other)))),
    };
    chat_prompt_ids(served.model, &messages).map_err(|e| ApiError::field("messages", format!("{e:#}")))
}

fn chat_message(i: usize, message: &Value) -> Result<ChatMessage, ApiError> {
    let field = format!("messages[{i}]");
    let f = Fields::of(message).map_err(|_| ApiError::field(&field, format!("{field} is {}, expected an object", json_kind(message))))?;
    let role = f.str("role").map_err(|e| e.with_param(&format!("{field}.role")))?;
    let role = role.ok_or_else(|| ApiError::field(&format!("{field}.role"), format!("{field}.role is missing")))?;
    let content = match f.get("content") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| match part.get("text").and_then(Value::as_str) {
                Some(text) if part.get("type").and_then(Value::as_str) == Some("text") => Ok(text),
                _ => Err(ApiError::field(
                    &format!("{field}.content[{j}]"),
                    format!("{field}.content[{j}] is not a text part, expected {{\"type\": \"text\", \"text\": ...}}"),
                )),
            })
            .collect::<Result<String, _>>()?,
        Some(other) => {
            return Err(ApiError::field(&format!("{field}.content"), format!("{field}.content is {}, expected a string", json_kind(other))))
        }
    };
    Ok(ChatMessage::new(role, content))
}
