//! lumen-collect: GPU-side collection for `lumen profile`: the CUPTI trace collector it injects into
//! a command's CUDA processes (this library, `CUDA_INJECTION64_PATH`; each process writes
//! `<pid>.lumen` for `lumen profile` to merge), and [`gpu_metrics`], the GPU counter sampling (CUPTI
//! PM sampling, else NVML) that runs in `lumen profile`'s own process meanwhile.

mod cupti;
pub mod gpu_metrics;
mod inject;
pub mod options;
mod pm_sampling;
pub mod records;

/// File name of the collector library that `CUDA_INJECTION64_PATH` must name.
pub const LIBRARY_FILE: &str = "liblumen_collect.so";
