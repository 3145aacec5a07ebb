//! A figure or why the trace cannot give it, and the reasons several sections share. Every
//! section's figures are [`Measured`]; the renderers print a missing one as "not available" with
//! its reason.

use serde::Serialize;

pub const NO_GPU_OPS: &str = "the trace has no GPU operations; record one with `lumen profile`";
pub const NO_API_CALLS: &str = "the trace has no CUDA API calls; record one with `lumen profile`";

/// A figure, or why the trace cannot give it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Measured<T> {
    Available(T),
    NotAvailable(String),
}

impl<T> Measured<T> {
    pub fn get(&self) -> Option<&T> {
        match self {
            Measured::Available(value) => Some(value),
            Measured::NotAvailable(_) => None,
        }
    }

    /// Why the figure is not available, when it is not.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Measured::Available(_) => None,
            Measured::NotAvailable(why) => Some(why),
        }
    }

    pub(crate) fn from_option(value: Option<T>, reason: impl FnOnce() -> String) -> Self {
        match value {
            Some(value) => Measured::Available(value),
            None => Measured::NotAvailable(reason()),
        }
    }
}
