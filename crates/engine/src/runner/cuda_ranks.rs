//! The engine's step machinery over the GPUs of a tensor-parallel model: a thread per rank
//! (`tp rank R`), each driving a [`CudaRunner`] on its GPU with its shard and its NCCL
//! communicator. Every rank runs the same step, and the ranks' collectives join them on the
//! devices; rank 0's sampled tokens are the step's. The engine hands out the smallest KV block
//! count any rank holds, so its block numbers are valid on every rank.
//!
//! A rank that fails answers with its error and the step fails; NCCL cannot abandon a collective
//! its peers wait in, so a device fault on one rank can leave the others' streams waiting (the
//! engine stops after a failed step in any case).

use super::cuda::{CudaRunner, RunnerConfig, SampleParams};
use super::StepResult;
use anyhow::{anyhow, bail, Context, Result};
use lumen_backend::cuda::nccl::Communicator;
use lumen_model::{Executor, ForwardBatch, Model, OwnedBatch};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// What the rank threads are asked to do.
enum Job {
    Launch(Arc<(OwnedBatch, Vec<SampleParams>)>),
    Finish,
    Logits,
    Profiler(bool),
}

/// A rank's answer to a job.
enum Answer {
    Ready(usize),
    Done,
    Tokens(Vec<u32>, Option<f64>),
    Logits(Vec<f32>),
}

pub struct CudaRanks {
    jobs: Vec<Sender<Job>>,
    answers: Receiver<(usize, Result<Answer>)>,
    threads: Vec<JoinHandle<()>>,
    num_blocks: usize,
}

impl CudaRanks {
    /// Starts a runner thread on each rank's GPU; `kv_blocks(free, bytes_per_token)` sizes each
    /// rank's cache, and the smallest count is the engine's.
    pub fn new(
        model: &Arc<Model>,
        config: RunnerConfig,
        kv_blocks: impl Fn(u64, usize) -> Result<usize> + Clone + Send + 'static,
    ) -> Result<Self> {
        let Executor::CudaRanks(ranks) = &model.executor else { bail!("model {} is not split over GPUs", model.name) };
        let ordinals: Vec<usize> = ranks.iter().map(|r| r.weights.gpu.ordinal).collect();
        let comms = Communicator::for_devices(&ordinals).context("tensor parallelism over NCCL")?;
        let (answers_tx, answers) = channel();
        let (mut jobs, mut threads) = (Vec::new(), Vec::new());
        for (r, comm) in comms.into_iter().enumerate() {
            let (tx, rx) = channel();
            let (model, config, kv_blocks, answer) = (model.clone(), config.clone(), kv_blocks.clone(), answers_tx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("tp rank {r}"))
                .spawn(move || {
                    let runner = CudaRunner::new(model, config, Some((r, comm)), kv_blocks);
                    let mut runner = match runner {
                        Ok(runner) => {
                            let _ = answer.send((r, Ok(Answer::Ready(runner.num_blocks()))));
                            runner
                        }
                        Err(e) => {
                            let _ = answer.send((r, Err(e)));
                            return;
                        }
                    };
                    serve_rank(r, &mut runner, rx, answer);
                })
                .with_context(|| format!("cannot start the thread of tensor-parallel rank {r}"))?;
            jobs.push(tx);
            threads.push(thread);
        }
        let mut ranks = CudaRanks { jobs, answers, threads, num_blocks: 0 };
        let ready = ranks.collect("set up its GPU")?;
        ranks.num_blocks = ready.iter().map(|a| if let Answer::Ready(b) = a { *b } else { 0 }).min().unwrap_or(0);
        Ok(ranks)
    }

    /// KV blocks the engine may hand out: the fewest any rank holds.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Every rank's answer to the job just sent, in rank order, or the first rank's error.
    fn collect(&self, what: &str) -> Result<Vec<Answer>> {
        let mut answers: Vec<Option<Answer>> = (0..self.jobs.len()).map(|_| None).collect();
        let mut failure = None;
        for _ in 0..self.jobs.len() {
            let (r, answer) = self.answers.recv().map_err(|_| anyhow!("a tensor-parallel rank thread stopped before it could {what}"))?;
            match answer {
                Ok(a) => answers[r] = Some(a),
                Err(e) => failure = failure.or(Some(e.context(format!("tensor-parallel rank {r} could not {what}")))),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(answers.into_iter().map(|a| a.expect("every rank answered")).collect()),
        }
    }

    fn send_all(&self, job: impl Fn() -> Job) -> Result<()> {
        for tx in &self.jobs {
            tx.send(job()).map_err(|_| anyhow!("a tensor-parallel rank thread has stopped"))?;
        }
        Ok(())
    }

    /// Launches the step on every rank.
    pub fn launch(&mut self, batch: &ForwardBatch, params: &[SampleParams]) -> Result<()> {
        let step = Arc::new((OwnedBatch::of(batch), params.to_vec()));
        self.send_all(|| Job::Launch(step.clone()))?;
        self.collect("launch the step").map(|_| ())
    }

    /// Waits for the step on every rank; returns rank 0's sampled tokens and device time (the
    /// ranks split dense models only: no expert load).
    pub fn finish(&mut self) -> Result<StepResult> {
        self.send_all(|| Job::Finish)?;
        let mut answers = self.collect("finish the step")?;
        match answers.swap_remove(0) {
            Answer::Tokens(tokens, device_ms) => Ok(StepResult { tokens, expert_load: Vec::new(), device_ms }),
            _ => bail!("tensor-parallel rank 0 answered the step's end without tokens"),
        }
    }

    /// Rank 0's `[rows, vocab]` logits of the last step (every rank holds the same, gathered).
    pub fn last_logits(&mut self) -> Result<Vec<f32>> {
        self.send_all(|| Job::Logits)?;
        match self.collect("read the logits")?.swap_remove(0) {
            Answer::Logits(logits) => Ok(logits),
            _ => bail!("tensor-parallel rank 0 answered without logits"),
        }
    }

    /// Opens or closes the CUDA profiler's window on every rank's GPU.
    pub fn profiler(&self, on: bool) -> Result<()> {
        self.send_all(|| Job::Profiler(on))?;
        self.collect(if on { "start the CUDA profiler" } else { "stop the CUDA profiler" }).map(|_| ())
    }
}

impl Drop for CudaRanks {
    fn drop(&mut self) {
        self.jobs.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A rank thread's loop: runs the jobs on its runner until the engine drops the ranks.
fn serve_rank(r: usize, runner: &mut CudaRunner, jobs: Receiver<Job>, answer: Sender<(usize, Result<Answer>)>) {
    while let Ok(job) = jobs.recv() {
        let result = match job {
            Job::Launch(step) => step.0.with(|batch| runner.launch(batch, &step.1)).map(|_| Answer::Done),
            Job::Finish => runner.finish().map(|step| Answer::Tokens(step.tokens, step.device_ms)),
            // Only rank 0's copy is read.
            Job::Logits if r == 0 => runner.last_logits().map(Answer::Logits),
            Job::Logits => Ok(Answer::Done),
            Job::Profiler(on) => runner.gpu().profiler(on).map(|_| Answer::Done),
        };
        if answer.send((r, result)).is_err() {
            return;
        }
    }
}
