//! `lumen generate`: one prompt in, the model's answer streamed to stdout. Prompts and answer
//! text come from `lumen_model::chat`. With `--logprobs N` each token is written instead as one
//! JSON line: `{"id": …, "logprob": …, "top": [[id, logprob], …]}` (the N likeliest first), for
//! comparing a model's log-probabilities with another implementation's.

use crate::common::{EngineArgs, ModelArgs};
use crate::recording::ProfileArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use lumen_engine::{FinishReason, Request, RequestEvent, SamplingParams, StopConditions};
use lumen_model::chat::{self, AnswerText};
use lumen_trace::instrument::{span, Category};
use std::io::Write;
use std::time::Instant;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    profile: ProfileArgs,
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_ids", required_unless_present = "prompt_ids")]
    prompt: Option<String>,
    /// The prompt as comma-separated token ids (for models without a tokenizer).
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Wrap the prompt in the model's chat template as a user turn.
    #[arg(long)]
    chat: bool,
    /// System message for --chat (default: the template's own).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: u32,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep generating past the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Write each token as a JSON line with its log-probability and the N likeliest tokens' (0 to
    /// 20), instead of the answer text.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=20))]
    logprobs: Option<u32>,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!("--temperature {} is not a non-negative number", args.temperature);
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p {} is outside (0, 1]", args.top_p);
    }
    let mut profiler = args.profile.profiler(&args.model.spec(), &[])?;
    let model = args.model.load(&args.engine)?;
    crate::recording::record_device(&mut profiler, &model)?;
    let tokenize_span = span(Category::Api, "tokenize");
    let prompt_ids = match (&args.prompt_ids, &args.prompt) {
        (Some(ids), _) => {
            if args.chat {
                bail!("--chat needs a text --prompt, not --prompt-ids");
            }
            ids.clone()
        }
        (None, Some(text)) if args.chat => chat::chat_prompt_ids(&model, &chat::user_turn(args.system.as_deref(), text))?,
        (None, Some(text)) => chat::text_prompt_ids(&model, text)?,
        (None, None) => bail!("give --prompt or --prompt-ids"),
    };
    drop(tokenize_span);
    let mut engine = args.engine.engine(model.clone(), model.cuda_weights().is_some())?;
    if let Some(p) = profiler {
        engine.enable_profiling(p);
    }
    let request = Request {
        prompt: prompt_ids.clone(),
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
            logprobs: args.logprobs.map(|n| n as usize),
        },
        stop: StopConditions { max_tokens: args.max_tokens as usize, stop_ids: Vec::new(), ignore_eos: args.ignore_eos },
    };
    let stream = engine.submit(request);
    let mut answer = AnswerText::new(&model);
    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    let mut first_token = None;
    let mut ids = Vec::new();
    loop {
        if let Err(stopped) = lumen_engine::interrupt::check() {
            writeln!(out).context("cannot write the answer to standard output")?;
            if let Some((path, iterations)) = engine.finish_profiling()? {
                lumen_trace::status!("[lumen] trace {}: {iterations} iterations recorded before the signal", path.display());
            }
            return Err(stopped.into());
        }
        if engine.has_work() {
            engine.step()?;
        }
        let mut finished = None;
        while let Ok(ev) = stream.events.try_recv() {
            match ev {
                RequestEvent::Token { id, logprobs } => {
                    first_token.get_or_insert_with(|| started.elapsed());
                    ids.push(id);
                    let written = match logprobs {
                        Some(lp) => writeln!(out, "{}", serde_json::json!({"id": id, "logprob": lp.logprob, "top": lp.top})),
                        None => write!(out, "{}", answer.push(id)),
                    };
                    written.and_then(|_| out.flush()).context("cannot write the answer to standard output")?;
                }
                RequestEvent::Finished { reason, .. } => finished = Some(reason),
            }
        }
        if let Some(reason) = finished {
            if args.logprobs.is_none() {
                writeln!(out, "{}", answer.finish()).context("cannot write the answer to standard output")?;
            }
            if let FinishReason::Rejected(why) = reason {
                bail!("the request was rejected: {why}");
            }
            if let Some((path, iterations)) = engine.finish_profiling()? {
                lumen_trace::status!("[lumen] trace {}: {iterations} iterations recorded", path.display());
            }
            let total = started.elapsed().as_secs_f64();
            let ttft = first_token.map_or(0.0, |d| d.as_secs_f64());
            let decode_rate = if ids.len() > 1 { (ids.len() - 1) as f64 / (total - ttft).max(1e-9) } else { 0.0 };
            lumen_trace::status!(
                "[lumen] {} prompt tokens, {} generated ({reason:?}); TTFT {:.1} ms, {:.1} tok/s decode",
                prompt_ids.len(),
                ids.len(),
                ttft * 1e3,
                decode_rate
            );
            return Ok(());
        }
    }
}
