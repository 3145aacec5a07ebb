//! What a caller submits (prompt ids, sampling, stop conditions) and what comes back on the
//! request's stream: tokens as they are sampled, then one `Finished` event with the timings.

use std::sync::mpsc::{Receiver, Sender};

pub type RequestId = u64;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1.0 means no nucleus cut.
    pub top_p: f32,
    /// Seed of the request's sampling stream; the same seed gives the same tokens.
    pub seed: u64,
    /// `Some(n)`: each token comes with its log-probability and the `n` likeliest tokens'.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, logprobs: None }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StopConditions {
    pub max_tokens: usize,
    /// Extra token ids that end the request (the model's EOS ids always do, unless ignored).
    pub stop_ids: Vec<u32>,
    pub ignore_eos: bool,
}

impl Default for StopConditions {
    fn default() -> Self {
        StopConditions { max_tokens: 16, stop_ids: Vec::new(), ignore_eos: false }
    }
}

/// What any request must satisfy to run on a given engine: the model's vocabulary, the longest
/// sequence the model context and the KV cache hold, and, without chunked prefill, the longest
/// prompt one iteration's token budget takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestLimits {
    pub vocab_size: usize,
    pub max_seq_len: usize,
    pub max_num_tokens: usize,
    pub chunked_prefill: bool,
}

impl RequestLimits {
    /// Why `request` can never run here, or `None` when it can.
    pub fn problem(&self, request: &Request) -> Option<String> {
        let (prompt, max_tokens) = (request.prompt.len(), request.stop.max_tokens);
        let vocab = self.vocab_size;
        if prompt == 0 {
            Some("the prompt is empty".to_string())
        } else if let Some(bad) = request.prompt.iter().find(|&&t| t as usize >= vocab) {
            Some(format!("prompt token id {bad} is out of range for a vocabulary of {vocab}"))
        } else if max_tokens == 0 {
            Some("max_tokens is 0, expected at least 1".to_string())
        } else if !self.chunked_prefill && prompt > self.max_num_tokens {
            Some(format!(
                "prompt of {prompt} tokens exceeds max_num_tokens {} and chunked prefill is off, so it can never be prefilled",
                self.max_num_tokens
            ))
        } else if prompt.saturating_add(max_tokens) > self.max_seq_len {
            Some(format!(
                "prompt of {prompt} tokens plus max_tokens {max_tokens} exceeds the engine's limit of {} tokens (model context or KV cache)",
                self.max_seq_len
            ))
        } else {
            None
        }
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub stop: StopConditions,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FinishReason {
    /// An EOS id or a stop id was sampled (it is part of the output).
    Stop,
    /// `max_tokens` were produced.
    Length,
    Aborted,
    /// The request could never run (for example longer than the KV cache); the text says why.
    Rejected(String),
}

/// Nanosecond timestamps on `lumen_trace::now_ns`'s clock.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestTimings {
    pub arrival_ns: u64,
    pub first_scheduled_ns: Option<u64>,
    pub first_token_ns: Option<u64>,
    pub end_ns: u64,
    /// Times this request was preempted and recomputed.
    pub preemptions: u32,
}

/// Log-probabilities under the model's own distribution (the log-softmax of the raw logits,
/// before temperature, top-k or top-p), as vLLM reports them by default.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The sampled token's.
    pub logprob: f32,
    /// The likeliest tokens and theirs, most likely first (ties: lower id first).
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RequestEvent {
    /// A sampled token, with its log-probabilities when the request asked for them.
    Token {
        id: u32,
        logprobs: Option<TokenLogprobs>,
    },
    Finished {
        reason: FinishReason,
        prompt_tokens: usize,
        output_tokens: usize,
        timings: RequestTimings,
    },
}

/// The receiving end of one request's events.
pub struct RequestStream {
    pub id: RequestId,
    pub events: Receiver<RequestEvent>,
}

impl RequestStream {
    /// Blocks until the request finishes; returns its tokens and its final event.
    pub fn collect(self) -> (Vec<u32>, RequestEvent) {
        let mut tokens = Vec::new();
        while let Ok(ev) = lumen_trace::instrument::wait("request stream: wait for tokens", || self.events.recv()) {
            match ev {
                RequestEvent::Token { id, .. } => tokens.push(id),
                done @ RequestEvent::Finished { .. } => return (tokens, done),
            }
        }
        let reason = FinishReason::Rejected("the engine stopped before the request finished".into());
        (tokens, RequestEvent::Finished { reason, prompt_tokens: 0, output_tokens: 0, timings: RequestTimings::default() })
    }
}

pub(crate) type EventSender = Sender<RequestEvent>;
