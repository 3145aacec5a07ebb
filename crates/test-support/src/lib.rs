//! Dev-only helpers shared by lumen's tests: the GPU gate that skips or fails,
//! scratch directories, the headless Chromium launcher and trace builders.
//! No library crate depends on it outside `[dev-dependencies]`.

pub mod chromium;
pub mod gpu;
pub mod rows;
pub mod scratch;
