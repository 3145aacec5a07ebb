//! `/v1/completions` and `/v1/chat/completions`: read and check the body, submit to the engine
//! (429 when the queue is full), then stream the answer as server-sent events or send it whole.
//! Tokens are detokenised as they come and cut at a stop string; a client that goes away aborts
//! its request, which frees its KV blocks before the next iteration.

use crate::app::AppState;
use crate::error::ApiError;
use crate::metrics::{record_request, FinishedRequest};
use crate::openai::{self, Endpoint, Generation};
use crate::reply::{logprobs_json, NamedLogprobs, ReplyHeader, TokenName, Usage};
use crate::stop::StopStrings;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use lumen_engine::{FinishReason, RequestEvent, RequestId, RequestTimings, TokenLogprobs};
use lumen_model::chat::AnswerText;
use lumen_trace::instrument::{span, Category};
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

pub async fn completions(State(app): State<Arc<AppState>>, body: Body) -> Response {
    generate(app, Endpoint::Completions, body).await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn chat_completions(State(app): State<Arc<AppState>>, body: Body) -> Response {
    generate(app, Endpoint::Chat, body).await.unwrap_or_else(IntoResponse::into_response)
}

/// Reads the whole body within `--max-body-bytes` and the body timeout.
pub async fn read_body(app: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let limit = app.options.max_body_bytes;
    match tokio::time::timeout(app.options.body_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {:.0} s", app.options.body_timeout.as_secs_f64()),
        )),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes (the server's --max-body-bytes), or was cut off"),
        )
        .with_param("body")),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// The body as a JSON value: UTF-8, then JSON.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    let _s = span(Category::Api, "http parse");
    let text =
        std::str::from_utf8(bytes).map_err(|e| ApiError::field("body", format!("the request body is not UTF-8 ({e}); expected JSON")))?;
    serde_json::from_str(text).map_err(|e| ApiError::field("body", format!("the request body is not valid JSON: {e}")))
}

async fn generate(app: Arc<AppState>, endpoint: Endpoint, body: Body) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let bytes = read_body(&app, body).await?;
    let value = parse_json(&bytes)?;
    let generation = openai::parse(endpoint, &value, &app.served())?;
    let prompt_tokens = generation.request.prompt.len();
    let stream = match app.options.max_queue {
        Some(most) => app.handle.try_submit(generation.request.clone(), most).map_err(|full| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{} requests are already waiting, the server's --max-queue; retry later", full.waiting),
            )
        })?,
        None => app.handle.submit(generation.request.clone()),
    };
    let guard = AbortOnDrop { app: app.clone(), id: stream.id, done: false };
    let events = forward(stream.events);
    let answer = Answer::new(&app, &generation, prompt_tokens, arrived);
    let header = ReplyHeader::new(endpoint, stream.id, &app.name);
    if generation.stream {
        Ok(stream_reply(header, generation, answer, events, guard))
    } else {
        whole_reply(header, generation, answer, events, guard).await
    }
}

/// Moves a request's events from the engine's channel onto the async side, one blocking thread
/// per request; it ends when the request finishes or the reply is dropped.
fn forward(events: std::sync::mpsc::Receiver<RequestEvent>) -> mpsc::Receiver<RequestEvent> {
    let (tx, rx) = mpsc::channel(64);
    tokio::task::spawn_blocking(move || {
        while let Ok(event) = events.recv() {
            let last = matches!(event, RequestEvent::Finished { .. });
            if tx.blocking_send(event).is_err() || last {
                return;
            }
        }
    });
    rx
}

/// Aborts the request in the engine unless it finished: the reply was dropped because the client
/// went away, or a stop string ended it early.
struct AbortOnDrop {
    app: Arc<AppState>,
    id: RequestId,
    done: bool,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if !self.done {
            self.app.handle.abort(self.id);
        }
    }
}

/// The answer as it builds up: text pieces cut at stop strings, token ids, their
/// log-probabilities when asked for, and the gaps between tokens.
struct Answer {
    app: Arc<AppState>,
    text: AnswerText,
    stops: StopStrings,
    token_ids: Vec<u32>,
    logprobs: Vec<NamedLogprobs>,
    /// Characters in the texts of the tokens in `logprobs`.
    logprob_chars: usize,
    prompt_tokens: usize,
    last_token: Instant,
    gaps_s: Vec<f64>,
}

/// How a request ended, for the reply.
enum Outcome {
    Finished { reason: &'static str, tail: String },
    Failed(ApiError),
}

impl Answer {
    fn new(app: &Arc<AppState>, generation: &Generation, prompt_tokens: usize, arrived: Instant) -> Self {
        Answer {
            app: app.clone(),
            text: AnswerText::new(&app.model),
            stops: StopStrings::new(generation.stop_strings.clone()),
            token_ids: Vec::new(),
            logprobs: Vec::new(),
            logprob_chars: 0,
            prompt_tokens,
            last_token: arrived,
            gaps_s: Vec::new(),
        }
    }

    /// Takes a token and its log-probabilities; returns the text it lets through.
    fn token(&mut self, id: u32, logprobs: Option<TokenLogprobs>) -> String {
        if let Some(lp) = logprobs {
            let top = lp.top.iter().map(|&(alt, logprob)| (self.token_name(alt), logprob)).collect();
            let token = self.token_name(id);
            self.logprob_chars += token.text.chars().count();
            self.logprobs.push(NamedLogprobs { token, logprob: lp.logprob, top });
        }
        let now = Instant::now();
        if !self.token_ids.is_empty() {
            self.gaps_s.push(now.duration_since(self.last_token).as_secs_f64());
        }
        self.last_token = now;
        self.token_ids.push(id);
        let piece = self.text.push(id);
        self.stops.push(&piece)
    }

    fn token_name(&self, id: u32) -> TokenName {
        match &self.app.model.tokenizer {
            Some(t) => {
                let bytes = t.token_bytes(id, false).to_vec();
                TokenName { text: String::from_utf8_lossy(&bytes).into_owned(), bytes: Some(bytes) }
            }
            None => TokenName { text: format!("token_id:{id}"), bytes: None },
        }
    }

    /// The `logprobs` of the whole answer (null unless asked for).
    fn all_logprobs(&self, generation: &Generation) -> Value {
        match generation.request.sampling.logprobs {
            Some(_) => logprobs_json(generation.endpoint, &self.logprobs, 0),
            None => Value::Null,
        }
    }

    /// The `logprobs` of the token taken last, for its chunk (null unless asked for); the
    /// completions' `text_offset` continues from the tokens before it.
    fn last_logprobs(&self, generation: &Generation) -> Value {
        match (generation.request.sampling.logprobs, self.logprobs.last()) {
            (Some(_), Some(last)) => {
                let offset = self.logprob_chars - last.token.text.chars().count();
                logprobs_json(generation.endpoint, std::slice::from_ref(last), offset)
            }
            _ => Value::Null,
        }
    }

    fn usage(&self) -> Usage {
        Usage { prompt_tokens: self.prompt_tokens, completion_tokens: self.token_ids.len() }
    }

    /// Ends the answer on the engine's final event (or on a stop string, when `event` is None).
    fn finish(&mut self, event: Option<(FinishReason, RequestTimings)>) -> Outcome {
        let _s = span(Category::Api, "finish");
        let stopped = self.stops.stopped();
        let reason = match &event {
            _ if stopped => "stop",
            Some((FinishReason::Stop, _)) => "stop",
            Some((FinishReason::Length, _)) => "length",
            Some((FinishReason::Aborted, _)) => "abort",
            Some((FinishReason::Rejected(why), _)) => {
                return Outcome::Failed(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the request failed: {why}")))
            }
            None => {
                return Outcome::Failed(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the engine stopped before the request finished"))
            }
        };
        let tail = if stopped { String::new() } else { self.stops.push(&self.text.finish()) + &self.stops.finish() };
        let timings = event.map(|(_, t)| t).unwrap_or_default();
        let finished = FinishedRequest {
            finish_reason: reason,
            prompt_tokens: self.prompt_tokens,
            output_tokens: self.token_ids.len(),
            timings: &timings,
            inter_token_s: &self.gaps_s,
        };
        record_request(&self.app.name, &finished);
        Outcome::Finished { reason, tail }
    }
}

/// The next event, or `None` when the engine dropped the request.
async fn next(events: &mut mpsc::Receiver<RequestEvent>) -> Option<RequestEvent> {
    events.recv().await
}

async fn whole_reply(
    header: ReplyHeader,
    generation: Generation,
    mut answer: Answer,
    mut events: mpsc::Receiver<RequestEvent>,
    mut guard: AbortOnDrop,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    let outcome = loop {
        match next(&mut events).await {
            Some(RequestEvent::Token { id, logprobs }) => {
                text.push_str(&answer.token(id, logprobs));
                if answer.stops.stopped() {
                    break answer.finish(None);
                }
            }
            Some(RequestEvent::Finished { reason, timings, .. }) => {
                guard.done = true;
                break answer.finish(Some((reason, timings)));
            }
            None => break answer.finish(None),
        }
    };
    match outcome {
        Outcome::Failed(e) => Err(e),
        Outcome::Finished { reason, tail } => {
            text.push_str(&tail);
            let ids = generation.return_token_ids.then_some(answer.token_ids.as_slice());
            let logprobs = answer.all_logprobs(&generation);
            Ok(axum::Json(header.complete(&text, reason, ids, logprobs, &answer.usage())).into_response())
        }
    }
}

fn sse(value: &Value) -> Bytes {
    let _s = span(Category::Api, "sse chunk");
    Bytes::from(format!("data: {value}\n\n"))
}

/// The state the event stream carries from chunk to chunk.
struct Streaming {
    header: ReplyHeader,
    generation: Generation,
    answer: Answer,
    events: mpsc::Receiver<RequestEvent>,
    guard: AbortOnDrop,
    /// Chunks ready to send, in order.
    queued: std::collections::VecDeque<Bytes>,
    ended: bool,
}

impl Streaming {
    /// Queues the chunks that end the stream: the finish reason (or the error), usage, `[DONE]`.
    fn end(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Failed(e) => self.queued.push_back(sse(&e.body())),
            Outcome::Finished { reason, tail } => {
                self.queued.push_back(sse(&self.header.chunk(&tail, None, Value::Null, Some(reason))));
                if self.generation.include_usage {
                    self.queued.push_back(sse(&self.header.usage_chunk(&self.answer.usage())));
                }
            }
        }
        self.queued.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        self.ended = true;
    }

    /// Waits for the engine's next event and queues what it adds to the stream.
    async fn advance(&mut self) {
        match next(&mut self.events).await {
            Some(RequestEvent::Token { id, logprobs }) => {
                let text = self.answer.token(id, logprobs);
                let ids = self.generation.return_token_ids.then_some([id]);
                let logprobs = self.answer.last_logprobs(&self.generation);
                if !text.is_empty() || ids.is_some() || !logprobs.is_null() {
                    self.queued.push_back(sse(&self.header.chunk(&text, ids.as_ref().map(|i| i.as_slice()), logprobs, None)));
                }
                if self.answer.stops.stopped() {
                    let outcome = self.answer.finish(None);
                    self.end(outcome);
                }
            }
            Some(RequestEvent::Finished { reason, timings, .. }) => {
                self.guard.done = true;
                let outcome = self.answer.finish(Some((reason, timings)));
                self.end(outcome);
            }
            None => {
                let outcome = self.answer.finish(None);
                self.end(outcome);
            }
        }
    }
}

fn stream_reply(
    header: ReplyHeader,
    generation: Generation,
    answer: Answer,
    events: mpsc::Receiver<RequestEvent>,
    guard: AbortOnDrop,
) -> Response {
    let mut state = Streaming { header, generation, answer, events, guard, queued: Default::default(), ended: false };
    if state.header.endpoint == Endpoint::Chat {
        let opening = sse(&state.header.role_chunk());
        state.queued.push_back(opening);
    }
    let chunks = futures_util::stream::unfold(state, |mut state| async move {
        while state.queued.is_empty() && !state.ended {
            state.advance().await;
        }
        let chunk = state.queued.pop_front()?;
        Some((Ok::<Bytes, std::convert::Infallible>(chunk), state))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(chunks))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
