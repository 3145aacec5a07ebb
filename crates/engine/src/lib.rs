//! lumen-engine: requests in, tokens out. It owns the executor loop, the engine config and its
//! file, the scheduler and KV-cache manager, and the model runner per device (KV storage,
//! staging, CUDA graphs, sampling).
//!
//! One iteration of [`Engine::step`] is one pass of the executor loop: admit new requests,
//! schedule under a token budget, prepare the flattened batch, run the model, sample, and update
//! the requests (stream tokens, free blocks). Stages hand each other typed values
//! ([`SchedulerOutput`], the model's `ForwardBatch`, [`StepOutput`]). [`EngineHandle`] runs the
//! loop on its own thread for callers that submit, stream and abort concurrently.

pub mod config;
pub mod engine;
pub mod handle;
pub mod interrupt;
pub mod kv_cache;
pub mod profiling;
pub mod request;
pub mod runner;
pub mod sampler;
pub mod scheduler;
pub mod stats;
pub mod work;

pub use config::{EngineConfig, KvBudget, SchedulerPolicy};
pub use engine::{Engine, StepOutput};
pub use handle::{EngineHandle, EngineLoad, FinishedTrace, MakeProfiler, ProfileRefusal, QueueFull};
pub use interrupt::Interrupted;
pub use profiling::Profiler;
pub use request::{
    FinishReason, Request, RequestEvent, RequestId, RequestLimits, RequestStream, RequestTimings, SamplingParams, StopConditions,
    TokenLogprobs,
};
pub use scheduler::SchedulerOutput;
pub use stats::IterationStats;
pub use work::{Dtype, IterationWork, WorkModel};
