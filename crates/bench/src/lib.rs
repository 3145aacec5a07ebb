//! `lumen-bench` owns the `trtllm-bench`-style benchmarking tooling: dataset
//! preparation (`prepare-dataset`: synthetic token datasets and tokenized real
//! prompt files, stored as JSON lines), the offline throughput/latency report,
//! the driver that runs a dataset through the engine, and the progress reporter.

pub mod dataset;
pub mod progress;
pub mod report;
pub mod run;
