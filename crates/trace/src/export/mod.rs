//! Trace exports for other viewers: Perfetto protobuf (TrackEvent) and Chrome trace JSON.

pub mod chrome;
pub mod perfetto;
