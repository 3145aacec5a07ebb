//! lumen-collect: GPU-side collection for `lumen profile`. It owns the CUPTI trace collector that
//! `lumen profile` injects into a command's CUDA processes, and the GPU metric samplers (CUPTI PM
//! sampling, NVML) that run in `lumen profile`'s own process meanwhile.
//!
//! The collector: `CUDA_INJECTION64_PATH` names this library and CUDA calls its
//! `InitializeInjection`. Each process writes its own `<pid>.lumen` in the directory the options
//! name, flushing every half second, so a crash loses at most the last half second; `lumen
//! profile` merges the files when the command exits. [`options`] carries what to record from
//! `lumen profile` to the injected processes, [`records`] turns CUPTI's activity records into
//! trace rows, and the injection itself (CUPTI subscription, buffers, capture windows) lives in
//! `inject`. [`gpu_metrics`] samples counters with PM sampling (`pm_sampling`) or NVML.

mod cupti;
pub mod gpu_metrics;
mod inject;
pub mod options;
mod pm_sampling;
pub mod records;

/// File name of the collector library that `CUDA_INJECTION64_PATH` must name.
pub const LIBRARY_FILE: &str = "liblumen_collect.so";
