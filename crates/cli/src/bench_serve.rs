//! `lumen bench serve`: the online load generator, with `vllm bench serve`'s options, against
//! any OpenAI-compatible server; the work is lumen-bench's `serve` module.

use anyhow::{Context, Result};
use clap::Args;
use lumen_bench::dataset::read_dataset;
use lumen_bench::serve::client::{ApiEndpoint, Client};
use lumen_bench::serve::load::{run_load, LoadOptions};
use lumen_bench::serve::report::{
    build_serving_report, parse_goodput, parse_metrics, parse_percentiles, render_serving_text, ServingSetup,
};
use lumen_bench::serve::requests::{dataset_requests, random_requests, RandomDataset};
use lumen_trace::output::{print_report, write_atomically};
use std::path::PathBuf;

#[derive(Args)]
pub struct BenchServeArgs {
    /// The server, e.g. http://127.0.0.1:8000.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    base_url: String,
    #[arg(long, default_value = "/v1/completions", value_name = "/v1/completions|/v1/chat/completions")]
    endpoint: String,
    /// The model name to send (default: the first one the server lists at /v1/models).
    #[arg(long)]
    model: Option<String>,
    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long)]
    api_key: Option<String>,
    /// A dataset in prepare-dataset's JSON lines (token-id prompts); without it, --dataset-name random.
    #[arg(long, conflicts_with = "dataset_name")]
    dataset: Option<PathBuf>,
    #[arg(long, value_parser = ["random"])]
    dataset_name: Option<String>,
    #[arg(long, default_value_t = 1024)]
    random_input_len: u32,
    #[arg(long, default_value_t = 128)]
    random_output_len: u32,
    /// Lengths are uniform within this share of their targets, [0, 1).
    #[arg(long, default_value_t = 0.0)]
    random_range_ratio: f64,
    /// Random prompt ids are drawn below this id.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    random_vocab_size: u32,
    /// Requests to send; with --dataset, 0 sends every line.
    #[arg(long, default_value_t = 1000)]
    num_prompts: usize,
    /// Requests per second (Poisson, or gamma with --burstiness), or inf to send all at once.
    #[arg(long, default_value = "inf")]
    request_rate: String,
    /// Shape of the gamma distribution of arrival gaps: 1 is Poisson, lower is burstier.
    #[arg(long, default_value_t = 1.0)]
    burstiness: f64,
    /// Most requests in flight.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrency: Option<u32>,
    /// Ask the server to ignore EOS, so each request produces exactly its output length.
    #[arg(long)]
    ignore_eos: bool,
    #[arg(long, default_value = "ttft,tpot,itl")]
    percentile_metrics: String,
    #[arg(long, default_value = "99")]
    metric_percentiles: String,
    /// Service-level bounds that make a request good, KEY:MILLISECONDS (ttft, tpot, e2el).
    #[arg(long, num_args = 1..)]
    goodput: Vec<String>,
    /// Write the result as JSON into --result-dir.
    #[arg(long)]
    save_result: bool,
    #[arg(long, default_value = ".")]
    result_dir: PathBuf,
    #[arg(long)]
    result_filename: Option<String>,
    /// POST /start_profile before the run and /stop_profile after it.
    #[arg(long)]
    profile: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn request_rate(text: &str) -> Result<Option<f64>> {
    if text == "inf" {
        return Ok(None);
    }
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(Some(rate)),
        _ => anyhow::bail!("--request-rate {text:?}: expected a positive number of requests per second, or inf"),
    }
}

pub fn run(args: BenchServeArgs) -> Result<()> {
    let endpoint = ApiEndpoint::parse(&args.endpoint)?;
    let rate = request_rate(&args.request_rate)?;
    let metrics = parse_metrics(&args.percentile_metrics)?;
    let percentiles = parse_percentiles(&args.metric_percentiles)?;
    let goodput = parse_goodput(&args.goodput)?;
    let requests = match &args.dataset {
        Some(path) => dataset_requests(&read_dataset(path, None, None)?, args.num_prompts),
        None => random_requests(&RandomDataset {
            num_prompts: args.num_prompts,
            input_len: args.random_input_len,
            output_len: args.random_output_len,
            range_ratio: args.random_range_ratio,
            vocab_size: args.random_vocab_size,
            seed: args.seed,
        })?,
    };
    anyhow::ensure!(!requests.is_empty(), "no request to send: --num-prompts is 0 or the dataset is empty");
    let setup_client = |model: String| Client::new(&args.base_url, endpoint, model, args.ignore_eos, args.api_key.clone());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => runtime.block_on(setup_client(String::new())?.served_model()).with_context(|| format!("cannot reach {}", args.base_url))?,
    };
    let client = setup_client(model.clone())?;
    if args.profile {
        let started = runtime.block_on(client.post_empty("/start_profile"))?;
        lumen_trace::status!("[lumen] /start_profile: {started}");
    }
    let options = LoadOptions {
        request_rate: rate,
        burstiness: args.burstiness,
        max_concurrency: args.max_concurrency.map(|c| c as usize),
        seed: args.seed,
    };
    let setup = ServingSetup {
        backend: "openai".into(),
        model_id: model.clone(),
        endpoint: args.endpoint.clone(),
        num_prompts: requests.len(),
        request_rate: rate,
        burstiness: args.burstiness,
        max_concurrency: options.max_concurrency,
        metrics,
        percentiles,
        goodput,
    };
    let profile_client = setup_client(model.clone())?;
    let result = run_load(client, requests, &options);
    if args.profile {
        // Also after a stop signal, so the server's trace of the window is written.
        let stopped = runtime.block_on(profile_client.post_empty("/stop_profile"))?;
        lumen_trace::status!("[lumen] /stop_profile: {stopped}");
    }
    let result = result?;
    let date = utc_stamp();
    let report = build_serving_report(&setup, &result.outcomes, result.duration_s, &date)?;
    print_report(&render_serving_text(&setup, &report))?;
    if args.save_result {
        let concurrency = setup.max_concurrency.map_or(String::new(), |c| format!("-concurrency{c}"));
        let name = args
            .result_filename
            .clone()
            .unwrap_or_else(|| format!("openai-{}qps{concurrency}-{}-{date}.json", args.request_rate, model.replace(['/', '@'], "_")));
        let path = args.result_dir.join(name);
        let text = serde_json::to_string_pretty(&report).context("serializing the result")?;
        write_atomically(&path, text.as_bytes()).with_context(|| format!("cannot write the result {}", path.display()))?;
        lumen_trace::status!("[lumen] result written to {}", path.display());
    }
    Ok(())
}

/// The time now as `YYYYMMDD-HHMMSS` (UTC), as vLLM stamps its result files.
fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil conversion.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rest / 3600, rest % 3600 / 60, rest % 60)
}
