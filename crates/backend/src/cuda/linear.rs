//! Linear layers on the GPU: `out = x · wᵀ` on typed tensors, through cuBLASLt or, for the few-row
//! shapes where it measured faster, the GEMV kernel. The choice is made per (rows, n, k) by
//! [`Linear::tune`], which times both on the real weights; batch-invariant mode never tunes, so
//! every row count takes the same arithmetic.

use super::device::{DeviceBuffer, Gpu};
use super::gemm::Gemm;
use super::kernels::{Kernels, GEMV_MAX_TOKENS};
use super::tensor::{DType, Tensor};
use anyhow::Result;
use std::collections::HashMap;

pub struct Linear {
    gemm: Gemm,
    /// Per (rows, n, k) of up to GEMV_MAX_TOKENS rows: whether the GEMV kernel beat cuBLASLt.
    gemv_wins: HashMap<(usize, usize, usize), bool>,
}

impl Linear {
    pub fn new(gpu: &Gpu, batch_invariant: bool) -> Result<Self> {
        Ok(Linear { gemm: Gemm::new(gpu, batch_invariant)?, gemv_wins: HashMap::new() })
    }

    /// Times the GEMV kernel against cuBLASLt for each weight in `weights` and 1..=`max_rows`
    /// (at most GEMV_MAX_TOKENS) rows, median of 5 runs each, and keeps the faster per shape.
    /// `x` and `y` are scratch buffers large enough for the inputs and outputs.
    pub fn tune(
        &mut self,
        gpu: &Gpu,
        kernels: &Kernels,
        weights: &[Tensor],
        x: &DeviceBuffer,
        y: &DeviceBuffer,
        max_rows: usize,
    ) -> Result<()> {
        let widest = weights.iter().map(|w| w.cols).max().unwrap_or(0);
        gpu.fill(x.ptr, 0x3c, (GEMV_MAX_TOKENS * widest * 2).min(x.bytes))?;
        let (a, b) = (gpu.event()?, gpu.event()?);
        for t in 1..=GEMV_MAX_TOKENS.min(max_rows) {
            for &w in weights {
                let (input, output) = (x.tensor(DType::Bf16, t, w.cols), y.tensor(DType::Bf16, t, w.rows));
                let mut median = [0f64; 2];
                for (which, m) in median.iter_mut().enumerate() {
                    let mut times = Vec::new();
                    for rep in 0..6 {
                        a.record(gpu)?;
                        if which == 0 {
                            self.gemm.matmul(gpu, input, w, output)?;
                        } else {
                            kernels.gemv(gpu, input, w, output)?;
                        }
                        b.record(gpu)?;
                        gpu.synchronize()?;
                        if rep > 0 {
                            times.push(a.elapsed_ms(&b).unwrap_or(f64::INFINITY));
                        }
                    }
                    times.sort_by(f64::total_cmp);
                    *m = times[times.len() / 2];
                }
                self.gemv_wins.insert((t, w.rows, w.cols), median[1] < median[0]);
            }
        }
        Ok(())
    }

    /// Queues `out[t, n] = x[t, k] · w[n, k]ᵀ` on the GPU's stream.
    pub fn run(&mut self, gpu: &Gpu, kernels: &Kernels, x: Tensor, w: Tensor, out: Tensor) -> Result<()> {
        if self.gemv_wins.get(&(x.rows, w.rows, w.cols)) == Some(&true) {
            kernels.gemv(gpu, x, w, out)
        } else {
            self.gemm.matmul(gpu, x, w, out)
        }
    }
}
