//! When requests go and how many are in flight, as `vllm bench serve` decides: at an infinite
//! rate all at once, else with gaps drawn from a gamma distribution of shape `burstiness` and
//! mean `1 / rate` (burstiness 1 is a Poisson process); `--max-concurrency` caps requests in
//! flight, a request past the cap waiting for a slot after its arrival time. A stop signal
//! (SIGINT, SIGTERM, SIGHUP) ends the run at once: requests in flight are dropped, which closes
//! their connections (a server aborts them), and the run returns [`Interrupted`].

use super::client::{BenchRequest, Client, Outcome};
use crate::progress::Progress;
use crate::sampling::Rng;
use anyhow::{ensure, Context, Result};
use lumen_engine::interrupt::{self, Interrupted};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct LoadOptions {
    /// Requests per second; `None` is infinite.
    pub request_rate: Option<f64>,
    pub burstiness: f64,
    pub max_concurrency: Option<usize>,
    pub seed: u64,
}

pub struct LoadResult {
    pub outcomes: Vec<Outcome>,
    /// From the first request sent to the last answer.
    pub duration_s: f64,
}

/// The gaps before each of `n` requests, in seconds.
pub fn arrival_gaps(n: usize, options: &LoadOptions) -> Result<Vec<f64>> {
    ensure!(options.burstiness > 0.0 && options.burstiness.is_finite(), "--burstiness {}: expected a positive number", options.burstiness);
    let Some(rate) = options.request_rate else { return Ok(vec![0.0; n]) };
    ensure!(rate > 0.0 && rate.is_finite(), "--request-rate {rate}: expected a positive number of requests per second, or inf");
    let mut rng = Rng::new(options.seed);
    let scale = 1.0 / (rate * options.burstiness);
    Ok((0..n).map(|_| gamma(&mut rng, options.burstiness) * scale).collect())
}

/// A gamma variate of shape `k` and scale 1 (Marsaglia and Tsang; shapes below 1 through
/// `gamma(k + 1) · U^(1/k)`).
fn gamma(rng: &mut Rng, k: f64) -> f64 {
    if k < 1.0 {
        return gamma(rng, k + 1.0) * (1.0 - rng.unit()).powf(1.0 / k);
    }
    let d = k - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = rng.normal();
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = 1.0 - rng.unit();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// Sends `requests` as `options` says and waits for all of them, or for a stop signal.
pub fn run_load(client: Client, requests: Vec<BenchRequest>, options: &LoadOptions) -> Result<LoadResult> {
    let gaps = arrival_gaps(requests.len(), options)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    let run = runtime.block_on(async move {
        tokio::select! {
            result = send_all(client, requests, gaps, options) => result,
            stopped = stop_signal() => Err(stopped.into()),
        }
    });
    // Dropping the runtime drops the request tasks still running, and with them their connections.
    runtime.shutdown_background();
    run
}

/// Resolves once a stop signal has arrived.
async fn stop_signal() -> Interrupted {
    loop {
        if let Err(stopped) = interrupt::check() {
            return stopped;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send_all(client: Client, requests: Vec<BenchRequest>, gaps: Vec<f64>, options: &LoadOptions) -> Result<LoadResult> {
    let client = Arc::new(client);
    let slots = Arc::new(tokio::sync::Semaphore::new(options.max_concurrency.unwrap_or(tokio::sync::Semaphore::MAX_PERMITS)));
    let mut progress = Progress::new(requests.len() as u64, "requests");
    let started = Instant::now();
    let mut arrival = Duration::ZERO;
    let mut tasks = Vec::with_capacity(requests.len());
    for (request, gap) in requests.into_iter().zip(gaps) {
        arrival += Duration::from_secs_f64(gap);
        tokio::time::sleep_until((started + arrival).into()).await;
        let (client, slots) = (client.clone(), slots.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await;
            client.send(&request).await
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.unwrap_or_else(|e| Outcome { error: format!("the request task failed: {e}"), ..Outcome::default() }));
        progress.inc(1);
    }
    progress.finish();
    Ok(LoadResult { outcomes, duration_s: started.elapsed().as_secs_f64() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(rate: Option<f64>, burstiness: f64) -> LoadOptions {
        LoadOptions { request_rate: rate, burstiness, max_concurrency: None, seed: 7 }
    }

    fn mean_and_cv(gaps: &[f64]) -> (f64, f64) {
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn gaps_have_mean_one_over_the_rate_and_spread_set_by_burstiness() {
        assert_eq!(arrival_gaps(3, &options(None, 1.0)).unwrap(), [0.0; 3], "an infinite rate sends everything at once");
        // A gamma of shape k has a coefficient of variation of 1/sqrt(k).
        for (burstiness, cv) in [(1.0, 1.0), (0.25, 2.0), (4.0, 0.5)] {
            let gaps = arrival_gaps(200_000, &options(Some(8.0), burstiness)).unwrap();
            let (mean, got_cv) = mean_and_cv(&gaps);
            assert!((mean - 0.125).abs() < 0.125 * 0.02, "burstiness {burstiness}: mean {mean}");
            assert!((got_cv - cv).abs() < cv * 0.03, "burstiness {burstiness}: cv {got_cv}, expected {cv}");
        }
        assert_eq!(arrival_gaps(5, &options(Some(2.0), 1.0)).unwrap(), arrival_gaps(5, &options(Some(2.0), 1.0)).unwrap(), "seeded");
        assert!(arrival_gaps(1, &options(Some(0.0), 1.0)).unwrap_err().to_string().contains("--request-rate 0"));
        assert!(arrival_gaps(1, &options(Some(1.0), -1.0)).unwrap_err().to_string().contains("--burstiness -1"));
    }
}
