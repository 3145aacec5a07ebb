//! `lumen-bench` owns the `trtllm-bench`-style benchmarking tooling: dataset
//! preparation (`prepare-dataset`: synthetic token datasets and tokenized real
//! prompt files, stored as JSON lines), the offline throughput/latency report,
//! the driver that runs a dataset through the engine, the progress reporter, and the engine
//! limits `bench throughput` tunes to the model, dataset and GPU.

pub mod dataset;
pub mod progress;
pub mod report;
pub mod run;
pub mod tuning;
