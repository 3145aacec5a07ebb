//! `bench serve`: the online load generator, against any OpenAI-compatible server (lumen's own,
//! vLLM, trtllm-serve), with `vllm bench serve`'s options and report so the figures compare.
//! [`client`] sends one request and times its stream, [`load`] decides when each request goes
//! and how many are in flight, and [`report`] turns the outcomes into the "Serving Benchmark
//! Result" and its JSON keys.

pub mod client;
pub mod load;
pub mod report;
pub mod requests;
