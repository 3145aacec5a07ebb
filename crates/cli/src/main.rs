//! The `lumen` binary: argument parsing and wiring only. Each subcommand lives in its own module and
//! hands its flags to the crate that does the work (engine, model, bench, trace, collect, analyze).

mod analyze;
mod bench;
mod bench_serve;
mod common;
mod generate;
mod profile;
mod recording;
mod serve;
mod trace;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use lumen_trace::alloc::CountingAllocator;

/// Counts host allocations for the per-iteration statistics and `LUMEN_PROFILE_RECORD_ALLOC`.
#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// lumen: an LLM inference engine built for performance analysis.
#[derive(Parser)]
#[command(name = "lumen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text (or token ids) from a prompt, streaming the answer.
    Generate(generate::GenerateArgs),
    /// Prepare datasets and benchmark the engine, as trtllm-bench does.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Serve the model over an OpenAI-compatible HTTP API, as trtllm-serve does.
    Serve(serve::ServeArgs),
    /// Inspect and export traces.
    #[command(subcommand)]
    Trace(trace::TraceCommand),
    /// Run a command under lumen's CUPTI collector and write one trace of all its CUDA processes.
    Profile(profile::ProfileArgs),
    /// Measure a trace: GPU busy and idle time, gaps, kernels, launches, iterations, metrics, memory.
    Analyze(analyze::AnalyzeArgs),
}

/// Lets every subcommand read `-1` as a value, so that a negative count is refused by the option's
/// own check, naming the option and the value, instead of being taken for an unknown flag.
fn negative_values_are_values(cmd: clap::Command) -> clap::Command {
    cmd.allow_negative_numbers(true).mut_subcommands(negative_values_are_values)
}

fn main() {
    let matches = negative_values_are_values(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if matches!(cli.command, Command::Trace(_) | Command::Analyze(_)) {
        // These only print reports: a reader that goes away (`| head`) ends lumen quietly, as
        // it ends any Unix filter, instead of a panic on the failed write.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if matches!(cli.command, Command::Generate(_) | Command::Bench(_)) {
        // Stop at an iteration boundary with the trace written, not in the middle of a step.
        lumen_engine::interrupt::install();
    }
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Serve(args) => serve::run(args),
        Command::Trace(cmd) => trace::run(cmd),
        Command::Analyze(args) => analyze::run(args),
        Command::Profile(args) => match profile::run(args) {
            Ok(code) => std::process::exit(code),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        if let Some(stopped) = e.downcast_ref::<lumen_engine::Interrupted>() {
            lumen_trace::status!("[lumen] {stopped}");
            std::process::exit(stopped.exit_status());
        }
        lumen_trace::status!("error: {e:#}");
        std::process::exit(1);
    }
}
