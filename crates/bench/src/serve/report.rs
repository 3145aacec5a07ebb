//! The "Serving Benchmark Result" of `vllm bench serve`, its lines and JSON keys. Over the
//! successful requests: TTFT is the time to the first chunk with text, TPOT is
//! `(latency − TTFT) / (output tokens − 1)` for requests of more than one token, ITL is every gap
//! between chunks, E2EL the whole latency; throughputs divide by the benchmark's duration. For
//! each metric in `--percentile-metrics` come its mean, median, standard deviation and the
//! `--metric-percentiles`, as numpy computes them ([`Spread`]). With `--goodput`, a request is
//! good when each named metric is within its bound (TTFT, TPOT and E2EL per request).

use super::client::Outcome;
use crate::stats::Spread;
use anyhow::{bail, ensure, Result};
use serde_json::{json, Map, Value};
use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    Ttft,
    Tpot,
    Itl,
    E2el,
}

impl Metric {
    const ALL: [Metric; 4] = [Metric::Ttft, Metric::Tpot, Metric::Itl, Metric::E2el];

    pub fn key(self) -> &'static str {
        match self {
            Metric::Ttft => "ttft",
            Metric::Tpot => "tpot",
            Metric::Itl => "itl",
            Metric::E2el => "e2el",
        }
    }

    /// The section title and the label's short name in the text report.
    fn titles(self) -> (&'static str, &'static str) {
        match self {
            Metric::Ttft => ("Time to First Token", "TTFT"),
            Metric::Tpot => ("Time per Output Token (excl. 1st token)", "TPOT"),
            Metric::Itl => ("Inter-token Latency", "ITL"),
            Metric::E2el => ("End-to-end Latency", "E2EL"),
        }
    }

    fn parse(name: &str, flag: &str) -> Result<Metric> {
        match Metric::ALL.into_iter().find(|m| m.key() == name.trim()) {
            Some(m) => Ok(m),
            None => bail!("{flag}: {name:?} is not a metric; expected ttft, tpot, itl or e2el"),
        }
    }
}

/// What the run was, for the report.
#[derive(Debug, Clone)]
pub struct ServingSetup {
    pub backend: String,
    pub model_id: String,
    pub endpoint: String,
    pub num_prompts: usize,
    /// `None` is an infinite rate.
    pub request_rate: Option<f64>,
    pub burstiness: f64,
    pub max_concurrency: Option<usize>,
    pub metrics: Vec<Metric>,
    pub percentiles: Vec<f64>,
    /// Bounds in milliseconds.
    pub goodput: Vec<(Metric, f64)>,
}

/// `--percentile-metrics`: a comma list of metric names.
pub fn parse_metrics(text: &str) -> Result<Vec<Metric>> {
    text.split(',').map(|m| Metric::parse(m, "--percentile-metrics")).collect()
}

/// `--metric-percentiles`: a comma list of percentiles between 0 and 100.
pub fn parse_percentiles(text: &str) -> Result<Vec<f64>> {
    text.split(',')
        .map(|p| match p.trim().parse::<f64>() {
            Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
            _ => bail!("--metric-percentiles: {p:?} is not a percentile; expected numbers from 0 to 100, such as 50,90,99"),
        })
        .collect()
}

/// `--goodput KEY:MS ...`: bounds on ttft, tpot or e2el, in milliseconds.
pub fn parse_goodput(items: &[String]) -> Result<Vec<(Metric, f64)>> {
    items
        .iter()
        .map(|item| {
            let (name, value) =
                item.split_once(':').ok_or_else(|| anyhow::anyhow!("--goodput {item:?}: expected KEY:MILLISECONDS, such as ttft:500"))?;
            let metric = Metric::parse(name, "--goodput")?;
            ensure!(metric != Metric::Itl, "--goodput {item:?}: itl has no per-request value; bound ttft, tpot or e2el");
            match value.parse::<f64>() {
                Ok(ms) if ms > 0.0 && ms.is_finite() => Ok((metric, ms)),
                _ => bail!("--goodput {item:?}: {value:?} is not a positive number of milliseconds"),
            }
        })
        .collect()
}

/// The percentile's name in keys and labels: `99`, `99.9`.
fn percentile_word(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{}", p as u64)
    } else {
        format!("{p}")
    }
}

/// A request's TPOT in seconds, when it produced more than one token.
fn tpot_s(o: &Outcome) -> Option<f64> {
    (o.output_tokens > 1).then(|| (o.latency_s - o.ttft_s) / (o.output_tokens - 1) as f64)
}

/// The report as `vllm bench serve --save-result` writes it.
pub fn build_serving_report(setup: &ServingSetup, outcomes: &[Outcome], duration_s: f64, date: &str) -> Result<Value> {
    ensure!(duration_s > 0.0, "the benchmark took no time; expected a positive duration");
    let good: Vec<&Outcome> = outcomes.iter().filter(|o| o.success).collect();
    let total_input: usize = good.iter().map(|o| o.prompt_tokens).sum();
    let total_output: usize = good.iter().map(|o| o.output_tokens).sum();
    let values = |m: Metric| -> Vec<f64> {
        match m {
            Metric::Ttft => good.iter().map(|o| o.ttft_s).collect(),
            Metric::Tpot => good.iter().filter_map(|o| tpot_s(o)).collect(),
            Metric::Itl => good.iter().flat_map(|o| o.itl_s.iter().copied()).collect(),
            Metric::E2el => good.iter().map(|o| o.latency_s).collect(),
        }
    };
    let within = |o: &Outcome| {
        setup.goodput.iter().all(|&(m, ms)| match m {
            Metric::Ttft => o.ttft_s * 1e3 <= ms,
            Metric::Tpot => tpot_s(o).unwrap_or(0.0) * 1e3 <= ms,
            Metric::E2el => o.latency_s * 1e3 <= ms,
            Metric::Itl => true,
        })
    };
    let mut r = Map::new();
    r.insert("date".into(), json!(date));
    r.insert("backend".into(), json!(setup.backend));
    r.insert("model_id".into(), json!(setup.model_id));
    r.insert("endpoint".into(), json!(setup.endpoint));
    r.insert("num_prompts".into(), json!(setup.num_prompts));
    r.insert("request_rate".into(), setup.request_rate.map_or(json!("inf"), |v| json!(v)));
    r.insert("burstiness".into(), json!(setup.burstiness));
    r.insert("max_concurrency".into(), json!(setup.max_concurrency));
    r.insert("duration".into(), json!(duration_s));
    r.insert("completed".into(), json!(good.len()));
    r.insert("failed".into(), json!(outcomes.len() - good.len()));
    r.insert("total_input_tokens".into(), json!(total_input));
    r.insert("total_output_tokens".into(), json!(total_output));
    r.insert("request_throughput".into(), json!(good.len() as f64 / duration_s));
    let goodput = (!setup.goodput.is_empty()).then(|| good.iter().filter(|o| within(o)).count() as f64 / duration_s);
    r.insert("request_goodput".into(), json!(goodput));
    r.insert("output_throughput".into(), json!(total_output as f64 / duration_s));
    r.insert("total_token_throughput".into(), json!((total_input + total_output) as f64 / duration_s));
    r.insert("input_lens".into(), json!(outcomes.iter().map(|o| o.prompt_tokens).collect::<Vec<_>>()));
    r.insert("output_lens".into(), json!(outcomes.iter().map(|o| if o.success { o.output_tokens } else { 0 }).collect::<Vec<_>>()));
    r.insert("ttfts".into(), json!(outcomes.iter().map(|o| o.ttft_s).collect::<Vec<_>>()));
    r.insert("itls".into(), json!(outcomes.iter().map(|o| o.itl_s.clone()).collect::<Vec<_>>()));
    r.insert("generated_texts".into(), json!(outcomes.iter().map(|o| o.generated_text.clone()).collect::<Vec<_>>()));
    r.insert("errors".into(), json!(outcomes.iter().map(|o| o.error.clone()).collect::<Vec<_>>()));
    for &m in &setup.metrics {
        let ms: Vec<f64> = values(m).iter().map(|v| v * 1e3).collect();
        let s = Spread::of(&ms);
        let key = m.key();
        r.insert(format!("mean_{key}_ms"), json!(s.mean()));
        r.insert(format!("median_{key}_ms"), json!(s.percentile(50.0)));
        r.insert(format!("std_{key}_ms"), json!(s.std()));
        for &p in &setup.percentiles {
            r.insert(format!("p{}_{key}_ms", percentile_word(p)), json!(s.percentile(p)));
        }
    }
    Ok(Value::Object(r))
}

/// The report's text, laid out as `vllm bench serve` prints it.
pub fn render_serving_text(setup: &ServingSetup, report: &Value) -> String {
    let mut out = String::new();
    let number = |key: &str| report[key].as_f64().unwrap_or(0.0);
    let count = |key: &str| report[key].as_u64().unwrap_or(0);
    let _ = writeln!(out, "{:=^50}", " Serving Benchmark Result ");
    let _ = writeln!(out, "{:<40} {:<10}", "Successful requests:", count("completed"));
    let _ = writeln!(out, "{:<40} {:<10}", "Failed requests:", count("failed"));
    if let Some(c) = setup.max_concurrency {
        let _ = writeln!(out, "{:<40} {:<10}", "Maximum request concurrency:", c);
    }
    let _ = writeln!(out, "{:<40} {:<10.2}", "Benchmark duration (s):", number("duration"));
    let _ = writeln!(out, "{:<40} {:<10}", "Total input tokens:", count("total_input_tokens"));
    let _ = writeln!(out, "{:<40} {:<10}", "Total generated tokens:", count("total_output_tokens"));
    let _ = writeln!(out, "{:<40} {:<10.2}", "Request throughput (req/s):", number("request_throughput"));
    if !setup.goodput.is_empty() {
        let _ = writeln!(out, "{:<40} {:<10.2}", "Request goodput (req/s):", number("request_goodput"));
    }
    let _ = writeln!(out, "{:<40} {:<10.2}", "Output token throughput (tok/s):", number("output_throughput"));
    let _ = writeln!(out, "{:<40} {:<10.2}", "Total Token throughput (tok/s):", number("total_token_throughput"));
    for &m in &setup.metrics {
        let (title, short) = m.titles();
        let key = m.key();
        let _ = writeln!(out, "{:-^50}", title);
        let _ = writeln!(out, "{:<40} {:<10.2}", format!("Mean {short} (ms):"), number(&format!("mean_{key}_ms")));
        let _ = writeln!(out, "{:<40} {:<10.2}", format!("Median {short} (ms):"), number(&format!("median_{key}_ms")));
        for &p in &setup.percentiles {
            let word = percentile_word(p);
            let _ = writeln!(out, "{:<40} {:<10.2}", format!("P{word} {short} (ms):"), number(&format!("p{word}_{key}_ms")));
        }
    }
    let _ = writeln!(out, "{}", "=".repeat(50));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(ttft_s: f64, latency_s: f64, output_tokens: usize, itl_s: Vec<f64>) -> Outcome {
        Outcome { success: true, ttft_s, latency_s, output_tokens, prompt_tokens: 10, itl_s, ..Outcome::default() }
    }

    fn setup() -> ServingSetup {
        ServingSetup {
            backend: "openai".into(),
            model_id: "m".into(),
            endpoint: "/v1/completions".into(),
            num_prompts: 4,
            request_rate: None,
            burstiness: 1.0,
            max_concurrency: Some(2),
            metrics: parse_metrics("ttft,tpot,itl,e2el").unwrap(),
            percentiles: parse_percentiles("50,99.9").unwrap(),
            goodput: parse_goodput(&["ttft:150".into(), "tpot:60".into()]).unwrap(),
        }
    }

    fn outcomes() -> Vec<Outcome> {
        vec![
            // TPOT (1.0 - 0.1) / 9 = 100 ms: over the 60 ms bound.
            outcome(0.1, 1.0, 10, vec![0.1; 9]),
            // TPOT (0.5 - 0.2) / 5 = 60 ms: within both bounds... but TTFT 200 ms is not.
            outcome(0.2, 0.5, 6, vec![0.06; 5]),
            // One token: no TPOT, no gaps; TTFT 50 ms within.
            outcome(0.05, 0.05, 1, vec![]),
            Outcome { error: "HTTP 429".into(), prompt_tokens: 10, ..Outcome::default() },
        ]
    }

    fn close(actual: &Value, expected: f64) {
        let a = actual.as_f64().unwrap_or_else(|| panic!("{actual} is not a number"));
        assert!((a - expected).abs() < 1e-9, "{a} != {expected}");
    }

    #[test]
    fn figures_follow_vllm_s_definitions() {
        let r = build_serving_report(&setup(), &outcomes(), 2.0, "20260101-000000").unwrap();
        assert_eq!((r["completed"].as_u64(), r["failed"].as_u64()), (Some(3), Some(1)));
        assert_eq!((r["total_input_tokens"].as_u64(), r["total_output_tokens"].as_u64()), (Some(30), Some(17)));
        close(&r["request_throughput"], 1.5);
        close(&r["output_throughput"], 8.5);
        close(&r["total_token_throughput"], 23.5);
        // Only the one-token request meets both bounds.
        close(&r["request_goodput"], 0.5);
        close(&r["mean_ttft_ms"], (100.0 + 200.0 + 50.0) / 3.0);
        close(&r["median_ttft_ms"], 100.0);
        close(&r["mean_tpot_ms"], 80.0);
        close(&r["p50_tpot_ms"], 80.0);
        close(&r["p99.9_tpot_ms"], 60.0 + 40.0 * 0.999);
        close(&r["mean_itl_ms"], (9.0 * 100.0 + 5.0 * 60.0) / 14.0);
        close(&r["median_e2el_ms"], 500.0);
        close(&r["std_e2el_ms"], Spread::of(&[1000.0, 500.0, 50.0]).std());
        assert_eq!(r["output_lens"], json!([10, 6, 1, 0]));
        assert_eq!(r["errors"][3], "HTTP 429");
        assert_eq!(r["request_rate"], "inf");
    }

    #[test]
    fn text_has_vllm_s_lines() {
        let s = setup();
        let text = render_serving_text(&s, &build_serving_report(&s, &outcomes(), 2.0, "d").unwrap());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "============ Serving Benchmark Result ============");
        assert_eq!(lines[1], "Successful requests:                     3         ");
        assert!(lines.contains(&"Maximum request concurrency:             2         "), "{text}");
        assert!(lines.contains(&"Request goodput (req/s):                 0.50      "), "{text}");
        assert!(lines.contains(&"---------------Time to First Token----------------"), "{text}");
        assert!(lines.contains(&"-----Time per Output Token (excl. 1st token)------"), "{text}");
        assert!(lines.contains(&"P99.9 TPOT (ms):                         99.96     "), "{text}");
        assert!(lines.contains(&"Median E2EL (ms):                        500.00    "), "{text}");
        assert_eq!(*lines.last().unwrap(), "=".repeat(50));
    }

    #[test]
    fn bad_options_name_the_flag() {
        assert!(parse_metrics("ttft,foo").unwrap_err().to_string().contains("--percentile-metrics: \"foo\""));
        assert!(parse_percentiles("50,101").unwrap_err().to_string().contains("\"101\""));
        assert!(parse_goodput(&["ttft".into()]).unwrap_err().to_string().contains("expected KEY:MILLISECONDS"));
        assert!(parse_goodput(&["itl:5".into()]).unwrap_err().to_string().contains("itl has no per-request value"));
        assert!(parse_goodput(&["e2el:-1".into()]).unwrap_err().to_string().contains("not a positive number"));
    }
}
