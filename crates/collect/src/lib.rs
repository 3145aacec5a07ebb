//! lumen-collect: the CUPTI trace collector that `lumen profile` injects into a command's CUDA
//! processes (`CUDA_INJECTION64_PATH` names this library; CUDA calls its `InitializeInjection`).
//!
//! Each process writes its own `<pid>.lumen` in the directory the options name, flushing every
//! half second, so a crash loses at most the last half second; `lumen profile` merges the files
//! when the command exits. [`options`] carries what to record from `lumen profile` to the
//! injected processes, [`records`] turns CUPTI's activity records into trace rows, and the
//! injection itself (CUPTI subscription, buffers, capture windows) lives in `inject`.

mod inject;
pub mod options;
pub mod records;

/// File name of the collector library that `CUDA_INJECTION64_PATH` must name.
pub const LIBRARY_FILE: &str = "liblumen_collect.so";
