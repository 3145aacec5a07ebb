//! `lumen bench`: `prepare-dataset`, `throughput` and `latency`, with trtllm-bench's options, and
//! `serve` (in its own module).

use crate::common::{hardware_description, EngineArgs, ModelArgs};
use crate::recording::ProfileArgs;
use anyhow::{ensure, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use lumen_bench::dataset::DatasetEntry;
use lumen_bench::dataset::{
    parse_len_dist, read_dataset, real_dataset, token_norm_dist, token_unif_dist, write_dataset, NormDistParams, RealDatasetParams,
    UnifDistParams, DEFAULT_RANDOM_SEED,
};
use lumen_bench::render::{render_json, render_text};
use lumen_bench::report::{
    build_report, decode_step_timing, expert_balance, DatasetDetails, EngineDetails, LumenSettings, MachineDetails, Setup, WorldSettings,
};
use lumen_bench::run::{run_benchmark, RunOptions};
use lumen_bench::sampling::Vocab;
use lumen_bench::tuning::{tune, TuningInputs};
use lumen_engine::{Engine, KvBudget, SchedulerPolicy};
use lumen_model::{describe_model, Model, Quantization, Tokenizer};
use lumen_trace::output::{check_outputs, print_report, AtomicFile, Named};
use std::io::Write;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Write a JSON-lines dataset of token-id requests.
    PrepareDataset(PrepareArgs),
    /// Offline throughput: run a dataset through the engine and report trtllm-bench's metrics.
    Throughput(ThroughputArgs),
    /// Low latency, as trtllm-bench's: batch size 1, one request at a time, streamed, prompts
    /// prefilled whole, guaranteed-no-evict.
    Latency(LatencyArgs),
    /// Online serving load against an OpenAI-compatible server, as `vllm bench serve`: request
    /// rate, concurrency, and the Serving Benchmark Result (TTFT, TPOT, ITL, E2EL).
    Serve(crate::bench_serve::BenchServeArgs),
}

#[derive(Args)]
pub struct PrepareArgs {
    /// Model whose vocabulary, EOS id and tokenizer the dataset uses (default: the SmolLM2 GGUF).
    #[arg(long)]
    model: Option<String>,
    /// Output file (JSON lines).
    #[arg(long)]
    output: PathBuf,
    #[arg(long, default_value_t = DEFAULT_RANDOM_SEED)]
    random_seed: u64,
    #[command(subcommand)]
    kind: DatasetKind,
}

#[derive(Subcommand)]
enum DatasetKind {
    /// Input and output lengths from normal distributions (one z-score per request for both).
    TokenNormDist {
        #[arg(long, allow_hyphen_values = true)]
        num_requests: i64,
        #[arg(long, allow_hyphen_values = true)]
        input_mean: f64,
        #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
        input_stdev: f64,
        #[arg(long, allow_hyphen_values = true)]
        output_mean: f64,
        #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
        output_stdev: f64,
    },
    /// Input and output lengths uniform over inclusive ranges.
    TokenUnifDist {
        #[arg(long, allow_hyphen_values = true)]
        num_requests: i64,
        #[arg(long, allow_hyphen_values = true)]
        input_min: i64,
        #[arg(long, allow_hyphen_values = true)]
        input_max: i64,
        #[arg(long, allow_hyphen_values = true)]
        output_min: i64,
        #[arg(long, allow_hyphen_values = true)]
        output_max: i64,
    },
    /// Prompts from a local JSONL or text file, tokenized with the model's tokenizer.
    RealDataset {
        /// JSONL with a "prompt"/"text"/"input"/"question" field per line, or plain text (one prompt per line).
        #[arg(long)]
        dataset_path: PathBuf,
        /// Output lengths as "mean,stdev".
        #[arg(long)]
        output_len_dist: String,
        #[arg(long, allow_hyphen_values = true)]
        num_requests: Option<i64>,
    },
}

/// The ids of the tokenizer's control tokens, which synthetic prompts leave out.
fn special_ids(tokenizer: &Tokenizer) -> Vec<u32> {
    (0..tokenizer.vocab_size() as u32).filter(|&id| tokenizer.token_type(id) == Some(lumen_tokenizer::TokenType::Control)).collect()
}

fn positive(flag: &str, v: i64) -> Result<usize> {
    ensure!(v > 0, "{flag} {v} must be a positive count");
    Ok(v as usize)
}

fn length(flag: &str, v: i64) -> Result<u32> {
    ensure!(v > 0 && v <= u32::MAX as i64, "{flag} {v} must be a positive token count");
    Ok(v as u32)
}

fn prepare(args: PrepareArgs) -> Result<()> {
    let spec =
        ModelArgs { model: args.model.clone(), threads: None, device: lumen_model::Device::Cpu, quantization: Quantization::None }.spec();
    let (config, tokenizer) = describe_model(&spec)?;
    let eos_id = config.eos_token_ids.first().copied().or(tokenizer.as_ref().and_then(|t| t.eos_id()));
    let vocab = Vocab { size: config.vocab_size, eos_id, special: tokenizer.as_ref().map(special_ids).unwrap_or_default() };
    let entries = match args.kind {
        DatasetKind::TokenNormDist { num_requests, input_mean, input_stdev, output_mean, output_stdev } => token_norm_dist(
            &NormDistParams {
                num_requests: positive("--num-requests", num_requests)?,
                input_mean,
                input_stdev,
                output_mean,
                output_stdev,
                random_seed: args.random_seed,
            },
            &vocab,
        )?,
        DatasetKind::TokenUnifDist { num_requests, input_min, input_max, output_min, output_max } => token_unif_dist(
            &UnifDistParams {
                num_requests: positive("--num-requests", num_requests)?,
                input_min: length("--input-min", input_min)?,
                input_max: length("--input-max", input_max)?,
                output_min: length("--output-min", output_min)?,
                output_max: length("--output-max", output_max)?,
                random_seed: args.random_seed,
            },
            &vocab,
        )?,
        DatasetKind::RealDataset { dataset_path, output_len_dist, num_requests } => {
            let tokenizer = tokenizer.with_context(|| format!("real-dataset needs a tokenizer; model {spec} has none"))?;
            real_dataset(
                &RealDatasetParams {
                    path: &dataset_path,
                    output_len_dist: parse_len_dist(&output_len_dist)?,
                    num_requests: num_requests.map(|n| positive("--num-requests", n)).transpose()?,
                    random_seed: args.random_seed,
                },
                &|text| Ok(tokenizer.encode(text, false)),
            )?
        }
    };
    write_dataset(&args.output, &entries)?;
    let inputs: usize = entries.iter().map(|e| e.input_ids.len()).sum();
    let outputs: u64 = entries.iter().map(|e| e.output_tokens as u64).sum();
    lumen_trace::status!(
        "[lumen] wrote {} requests to {} (average input {:.1} tokens, average output {:.1} tokens)",
        entries.len(),
        args.output.display(),
        inputs as f64 / entries.len() as f64,
        outputs as f64 / entries.len() as f64
    );
    Ok(())
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    #[command(flatten)]
    profile: ProfileArgs,
    /// Dataset (JSON lines, as `lumen bench prepare-dataset` writes them); a line's prompt may be
    /// input_ids, logits, or prompt text, tokenized with the model's tokenizer.
    #[arg(long)]
    dataset: PathBuf,
    /// Use only the first N requests of the dataset; 0, or more than it holds, is all of them.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    num_requests: i64,
    /// Requests drawn at random from the dataset and run first, left out of the figures.
    #[arg(long, default_value_t = 2, allow_hyphen_values = true)]
    warmup: i64,
    /// Which requests the scheduler admits: guaranteed-no-evict admits one only when the KV cache
    /// can hold it to its full length and never preempts; max-utilization admits while this
    /// iteration's blocks are free and preempts (recomputing later) when they run out.
    #[arg(long, value_enum, default_value_t = PolicyArg::GuaranteedNoEvict)]
    scheduler_policy: PolicyArg,
    /// End-of-sequence id; -1 ignores EOS so every request produces exactly its output_tokens.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    eos_id: i64,
    /// Write the report as JSON too.
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// Write one JSON object per engine iteration.
    #[arg(long)]
    iteration_log: Option<PathBuf>,
}

/// `--scheduler-policy`'s choices.
#[derive(Clone, Copy, ValueEnum)]
enum PolicyArg {
    GuaranteedNoEvict,
    MaxUtilization,
}

impl From<PolicyArg> for SchedulerPolicy {
    fn from(arg: PolicyArg) -> Self {
        match arg {
            PolicyArg::GuaranteedNoEvict => SchedulerPolicy::GuaranteedNoEvict,
            PolicyArg::MaxUtilization => SchedulerPolicy::MaxUtilization,
        }
    }
}

#[derive(Args)]
pub struct ThroughputArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Most requests in flight; 0 or less is unlimited.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    concurrency: i64,
    /// Stream each request's tokens and time its first chunk: TTFT, TPOT and GTPS come from what
    /// the caller receives.
    #[arg(long)]
    streaming: bool,
}

#[derive(Args)]
pub struct LatencyArgs {
    #[command(flatten)]
    run: RunArgs,
}

/// What the model computes in, for the report: the device's type, and FP8 where the layers'
/// weights were quantized.
fn compute_dtype(model: &Model) -> String {
    match (model.cuda_weights().is_some(), model.quantization() == Quantization::Fp8) {
        (true, false) => "bfloat16".into(),
        (true, true) => "fp8_e4m3 layer weights and activations, bfloat16 elsewhere".into(),
        (false, false) => "float32".into(),
        (false, true) => "float32 over FP8-quantized layer weights and activations".into(),
    }
}

/// The batch limits `bench throughput` on CUDA uses where neither a flag nor `--config` sets them
/// (`lumen_bench::tuning`), announced with the reason; None on the CPU, or when both are given.
fn tuned_limits(engine: &EngineArgs, model: &Model, entries: &[DatasetEntry]) -> Result<Option<(usize, usize)>> {
    let Some(weights) = model.cuda_weights() else { return Ok(None) };
    if engine.batch_limits_given()? {
        return Ok(None);
    }
    let c = model.config();
    let mean = |f: &dyn Fn(&DatasetEntry) -> usize| entries.iter().map(f).sum::<usize>() as f64 / entries.len().max(1) as f64;
    let inputs = TuningInputs {
        layers: c.num_layers,
        kv_heads: c.num_kv_heads,
        head_dim: c.head_dim,
        latent_width: c.mla.as_ref().map(|m| m.latent_width()),
        params: c.num_params(),
        weight_bytes: if model.quantization() == Quantization::Fp8 { 1.0 } else { 2.0 },
        kv_bytes: if engine.config(true)?.kv_cache_fp8 { 1.0 } else { 2.0 },
        tensor_parallel: engine.tensor_parallel_size()?,
        pipeline_parallel: 1,
        mean_isl: mean(&|e| e.input_ids.len()),
        mean_osl: mean(&|e| e.output_tokens as usize),
        kv_fraction: engine.kv_fraction()?,
        gpu_memory_gib: weights.gpu.info.total_memory as f64 / (1u64 << 30) as f64,
    };
    let limits = tune(&inputs)?;
    lumen_trace::status!("[lumen] tuned to the model, dataset and GPU: {}", limits.explain(&inputs));
    Ok(Some((limits.max_batch_size, limits.max_num_tokens)))
}

/// How `bench throughput` and `bench latency` differ.
struct Mode {
    concurrency: Option<usize>,
    streaming: bool,
    /// Tune the batch limits on CUDA (throughput).
    tune: bool,
    /// Batch size 1 and no chunked prefill (latency).
    low_latency: bool,
}

fn run_bench(args: RunArgs, mode: Mode) -> Result<()> {
    ensure!(args.warmup >= 0, "--warmup {} must not be negative", args.warmup);
    ensure!(args.num_requests >= 0, "--num-requests {} must not be negative (0 runs the whole dataset)", args.num_requests);
    ensure!(args.eos_id >= -1, "--eos-id {} must be a token id or -1", args.eos_id);
    let dataset = [Named::new("--dataset", &args.dataset)];
    let trace = args.profile.trace_output();
    let outputs: Vec<Named> = [("--report-json", args.report_json.as_deref()), ("--iteration-log", args.iteration_log.as_deref())]
        .into_iter()
        .chain(trace.as_ref().map(|(what, p)| (*what, Some(p.as_path()))))
        .filter_map(|(what, p)| p.map(|p| Named::new(what, p)))
        .collect();
    check_outputs(&outputs, &dataset)?;
    let mut profiler = args.profile.profiler(&args.model.spec(), &dataset)?;
    let model = args.model.load(&args.engine)?;
    crate::recording::record_device(&mut profiler, &model)?;
    let vocab = model.config().vocab_size;
    ensure!(args.eos_id < vocab as i64, "--eos-id {} is out of range for a vocabulary of {vocab}", args.eos_id);
    let tokenize = model.tokenizer.as_ref().map(|t| move |text: &str| -> Result<Vec<u32>> { Ok(t.encode(text, false)) });
    let mut entries = read_dataset(&args.dataset, Some(vocab), tokenize.as_ref().map(|f| f as &dyn Fn(&str) -> Result<Vec<u32>>))?;
    if args.num_requests > 0 {
        entries.truncate(args.num_requests as usize);
    }
    let dataset_path = args.dataset.display().to_string();
    let details = DatasetDetails::of(&entries, &dataset_path).context("the dataset holds no request")?;
    let limits = if mode.tune { tuned_limits(&args.engine, &model, &entries)? } else { None };
    let is_cuda = model.cuda_weights().is_some();
    let mut config = args.engine.config_with_limits(is_cuda, limits)?;
    config.scheduler_policy = args.scheduler_policy.into();
    if mode.low_latency {
        config.max_batch_size = 1;
        config.chunked_prefill = false;
    }
    let mut engine = Engine::new(model.clone(), config)?;
    let report_file = match &args.report_json {
        Some(p) => Some((p, AtomicFile::create(p).context("the report")?)),
        None => None,
    };
    let options = RunOptions {
        warmup: args.warmup as usize,
        warmup_seed: DEFAULT_RANDOM_SEED,
        streaming: mode.streaming,
        concurrency: mode.concurrency,
        eos_id: (args.eos_id >= 0).then_some(args.eos_id as u32),
    };
    // The iteration log is streamed a line per iteration, so it can be followed while the run goes
    // on and keeps every iteration that ran when the run is stopped or killed.
    let mut log = match &args.iteration_log {
        Some(p) => Some(std::io::LineWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create the iteration log {}", p.display()))?,
        )),
        None => None,
    };
    let result = run_benchmark(&mut engine, &entries, &options, log.as_mut().map(|w| w as &mut dyn Write), profiler)?;
    if let Some((path, iterations)) = &result.trace {
        lumen_trace::status!("[lumen] trace {}: {iterations} iterations recorded", path.display());
    }
    if let Some(mut w) = log {
        w.flush().context("cannot write the iteration log")?;
    }
    let setup = setup(&args, &model, &engine, &options);
    let mut report = build_report(&setup, &details, &result.records)?;
    report.lumen.expert_load = expert_balance(&result.iterations);
    report.lumen.decode_steps = decode_step_timing(&result.iterations);
    print_report(&render_text(&report))?;
    if let Some((p, mut f)) = report_file {
        f.write_all(render_json(&report)?.as_bytes()).with_context(|| format!("cannot write report {}", p.display()))?;
        f.commit().context("the report")?;
    }
    Ok(())
}

/// What the report says about the model, the engine and the run.
fn setup(args: &RunArgs, model: &Model, engine: &Engine, options: &RunOptions) -> Setup {
    let threads = args.model.threads();
    let gpu = model.cuda_weights().map(|w| &w.gpu.info);
    let name = |fp8: bool| if fp8 { "FP8" } else { "None" }.to_owned();
    Setup {
        engine: EngineDetails {
            model: model.name.clone(),
            model_path: args.model.spec(),
            version: env!("CARGO_PKG_VERSION").into(),
            backend: if gpu.is_some() { "cuda".into() } else { "cpu".into() },
            dtype: compute_dtype(model),
            kv_cache_dtype: name(engine.config.kv_cache_fp8),
            quantization: name(model.quantization() == Quantization::Fp8),
            max_sequence_length: engine.max_seq_len(),
        },
        machine: gpu.map(|g| MachineDetails {
            name: g.name.clone(),
            memory_total: g.total_memory as f64 / (1u64 << 30) as f64,
            clocks_mem: None,
        }),
        world: WorldSettings {
            tp_size: engine.config.tensor_parallel_size,
            pp_size: 1,
            ep_size: None,
            world_size: engine.config.tensor_parallel_size,
            max_batch_size: engine.config.max_batch_size,
            max_num_tokens: engine.config.max_num_tokens,
            scheduling_policy: engine.config.scheduler_policy.report_name().into(),
            kv_cache_percentage: match engine.config.kv_budget {
                KvBudget::GpuFraction(f) => Some(f),
                _ => None,
            },
        },
        lumen: LumenSettings {
            hardware: match gpu {
                Some(g) => format!(
                    "{} ({} SMs, {:.0} GiB); host {}",
                    g.name,
                    g.multiprocessors,
                    g.total_memory as f64 / (1u64 << 30) as f64,
                    hardware_description(threads)
                ),
                None => hardware_description(threads),
            },
            threads,
            kv_cache_blocks: engine.kv_blocks(),
            kv_block_size: engine.config.block_size,
            expanded_kv_cache_tokens: model.config().expanded_kv_values_per_token_per_layer().map(|expanded| {
                let tokens = engine.kv_blocks() * engine.config.block_size;
                tokens * model.config().kv_values_per_token_per_layer() / expanded
            }),
            chunked_prefill: engine.config.chunked_prefill,
            overlap_scheduler: engine.overlaps(),
            warmup: options.warmup,
            concurrency: options.concurrency,
            streaming: options.streaming,
            eos_id: options.eos_id,
            perfect_router: model.config().moe.is_some().then(|| model.perfect_router()),
            fp8_accumulation: (gpu.is_some() && model.quantization() == Quantization::Fp8)
                .then(|| if lumen_backend::cuda::gemm::fp8_fast_accumulation() { "fast" } else { "promoted" }.to_owned()),
        },
    }
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::PrepareDataset(a) => prepare(a),
        BenchCommand::Throughput(a) => {
            let concurrency = (a.concurrency > 0).then_some(a.concurrency as usize);
            run_bench(a.run, Mode { concurrency, streaming: a.streaming, tune: true, low_latency: false })
        }
        BenchCommand::Serve(a) => crate::bench_serve::run(a),
        BenchCommand::Latency(a) => run_bench(a.run, Mode { concurrency: Some(1), streaming: true, tune: false, low_latency: true }),
    }
}
