//! Hardware counters sampled on the GPU (SM active, DRAM read/write, tensor activity, NVML
//! utilisation), per counter and device: their distribution, a bucketed series for a chart, and
//! the source that sampled them.

use std::collections::HashMap;

use lumen_trace::model::TraceData;
use serde::Serialize;

use crate::measured::Measured;
use crate::stats::{Buckets, Distribution};
use crate::view::{measured, missing, Block};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hardware {
    /// `gpu_metrics_source` from the trace's meta: `cupti-pm`, `nvml-gpm`, `nvml-utilization`.
    pub source: Measured<String>,
    /// In the order the counters first appear.
    pub counters: Vec<CounterSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CounterSummary {
    pub name: String,
    pub device: u32,
    pub values: Distribution,
    pub start_ns: u64,
    pub end_ns: u64,
    /// The mean sample of each of (at most) `buckets` equal slices of [start_ns, end_ns]; `None`
    /// where a slice holds no sample.
    pub series: Vec<Option<f64>>,
}

pub fn analyze(trace: &TraceData, buckets: usize) -> Measured<Hardware> {
    let source = trace.meta("gpu_metrics_source").map(str::to_string);
    let mut order: Vec<(&str, u32)> = Vec::new();
    let mut samples: HashMap<(&str, u32), Vec<(u64, f64)>> = HashMap::new();
    for c in &trace.counters {
        let Some(device) = c.device else { continue };
        let key = (c.name.as_str(), device);
        let rows = samples.entry(key).or_insert_with(|| {
            order.push(key);
            Vec::new()
        });
        rows.push((c.ts_ns, c.value));
    }
    if order.is_empty() {
        return Measured::NotAvailable(match &source {
            Some(source) => format!("the trace has no GPU metric samples (gpu_metrics_source: {source})"),
            None => "the trace has no GPU metric samples; record them with `lumen profile --gpu-metrics`".into(),
        });
    }
    let counters = order
        .into_iter()
        .map(|(name, device)| {
            let rows = &samples[&(name, device)];
            let start_ns = rows.iter().map(|r| r.0).min().expect("a counter has samples");
            let end_ns = rows.iter().map(|r| r.0).max().expect("a counter has samples");
            let mut values: Vec<f64> = rows.iter().map(|r| r.1).collect();
            CounterSummary {
                name: name.to_string(),
                device,
                values: Distribution::of(&mut values).expect("a counter has samples"),
                start_ns,
                end_ns,
                series: Buckets::new(start_ns, end_ns, buckets).means(rows.iter().copied()),
            }
        })
        .collect();
    let source = Measured::from_option(source, || "the trace's meta has no gpu_metrics_source".into());
    Measured::Available(Hardware { source, counters })
}

/// The section's blocks, for the terminal and the page (which draws the series as a chart).
pub fn view(hardware: &Measured<Hardware>) -> Vec<Block> {
    let h = match hardware {
        Measured::Available(h) => h,
        Measured::NotAvailable(why) => return vec![Block::Facts(vec![missing("counters", why)])],
    };
    let rows = h
        .counters
        .iter()
        .map(|c| {
            let v = &c.values;
            [c.name.clone(), c.device.to_string(), v.count.to_string()]
                .into_iter()
                .chain([v.mean, v.median, v.p90, v.max].map(|x| format!("{x:.1}")))
                .collect()
        })
        .collect();
    let mut blocks = vec![
        Block::Facts(vec![measured("source", &h.source, String::clone)]),
        Block::Table { header: vec!["counter", "device", "samples", "mean", "p50", "p90", "max"], left: vec![0], rows },
    ];
    for c in &h.counters {
        let full_scale = if c.name.ends_with('%') { 100.0 } else { c.values.max };
        blocks.push(Block::Series {
            label: format!("{} (device {})", c.name, c.device),
            values: c.series.iter().map(|v| v.map(|v| if full_scale > 0.0 { v / full_scale } else { 0.0 })).collect(),
        });
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_trace::model::CounterRow;

    fn sample(ts_ns: u64, name: &str, value: f64) -> CounterRow {
        CounterRow { ts_ns, name: name.into(), device: Some(0), value }
    }

    #[test]
    fn counters_summarise_per_name_and_device() {
        let trace = TraceData {
            meta: vec![("gpu_metrics_source".into(), "cupti-pm".into())],
            counters: vec![
                sample(0, "sm active %", 10.0),
                sample(0, "dram read %", 5.0),
                sample(50, "sm active %", 30.0),
                sample(100, "sm active %", 50.0),
                CounterRow { ts_ns: 10, name: "kv_util".into(), device: None, value: 0.5 },
            ],
            ..TraceData::default()
        };
        let h = analyze(&trace, 4);
        let h = h.get().unwrap();
        assert_eq!(h.source, Measured::Available("cupti-pm".into()));
        let names: Vec<&str> = h.counters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["sm active %", "dram read %"], "engine counters without a device are not hardware");
        let sm = &h.counters[0];
        assert_eq!((sm.values.count, sm.values.mean, sm.values.median, sm.values.max), (3, 30.0, 30.0, 50.0));
        assert_eq!(sm.series, [Some(10.0), None, Some(30.0), Some(50.0)]);
        assert!(h.counters[1].series.is_empty(), "one sample spans no time");
    }

    #[test]
    fn no_samples_names_the_source() {
        let trace = TraceData { meta: vec![("gpu_metrics_source".into(), "none (NVML missing)".into())], ..TraceData::default() };
        assert_eq!(
            analyze(&trace, 10),
            Measured::NotAvailable("the trace has no GPU metric samples (gpu_metrics_source: none (NVML missing))".into())
        );
        assert!(matches!(analyze(&TraceData::default(), 10), Measured::NotAvailable(why) if why.contains("--gpu-metrics")));
    }
}
