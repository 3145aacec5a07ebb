//! `lumen-bench` owns the `trtllm-bench`-style benchmarking tooling: dataset preparation
//! (`prepare-dataset`: synthetic token datasets and tokenized real prompt files, stored as JSON
//! lines) and reading datasets, the driver that runs a dataset through the engine and times each
//! request from the caller's side, the report (its figures, percentile statistics and text
//! layout), the progress reporter, and the engine limits `bench throughput` tunes to the model,
//! dataset and GPU; and `bench serve`, the online load generator against an OpenAI-compatible
//! server, with `vllm bench serve`'s report.

pub mod dataset;
pub mod progress;
pub mod render;
pub mod report;
pub mod run;
pub mod sampling;
pub mod serve;
pub mod stats;
pub mod tuning;
