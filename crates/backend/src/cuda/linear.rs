//! Linear layers on the GPU: `out = x · wᵀ` on typed tensors, through cuBLASLt or, for the few-row
//! shapes where it measured faster, the GEMV kernel. The choice is made per (rows, n, k) by
//! [`Linear::tune`], which times both on the real weights, each shape's layers back to back;
//! batch-invariant mode never tunes, so every row count takes the same arithmetic. For FP8 weights
//! the bf16 activations are quantized to FP8 with one dynamic scale per product (vLLM's dynamic
//! per-tensor scheme): for cuBLASLt into a buffer reserved with [`Linear::reserve_fp8_inputs`], and
//! inside the FP8 GEMV kernel to the same codes (no launch of its own), so a product's arithmetic
//! does not depend on the choice.

use super::device::{DeviceBuffer, Gpu};
use super::gemm::Gemm;
use super::kernels::{gemv_k_step, Kernels, FP8_ONE_BLOCK_ELEMENTS, GEMV_MAX_TOKENS};
use super::tensor::{DType, Tensor};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;

pub struct Linear {
    gemm: Gemm,
    /// Per (rows, n, k) of up to GEMV_MAX_TOKENS rows: whether the GEMV kernel beat cuBLASLt.
    gemv_wins: HashMap<(usize, usize, usize), bool>,
    /// Quantized activations for FP8 products: their codes, and their scale (f32, at offset 0:
    /// cuBLASLt refuses a scale pointer that is not 16-byte aligned) and amax (u32, at 16).
    fp8_inputs: Option<(DeviceBuffer, DeviceBuffer)>,
    /// The activations (pointer, elements) whose amax the kernel that wrote them has put in the
    /// amax word ([`Linear::input_amax`]): the next product, if it reads them, skips `amax_bf16`.
    amax_written_for: Option<(u64, usize)>,
}

impl Linear {
    pub fn new(gpu: &Gpu, batch_invariant: bool) -> Result<Self> {
        Ok(Linear { gemm: Gemm::new(gpu, batch_invariant)?, gemv_wins: HashMap::new(), fp8_inputs: None, amax_written_for: None })
    }

    /// Reserves room for `elements` quantized activations, the most any FP8 product of the model
    /// takes in one step.
    pub fn reserve_fp8_inputs(&mut self, gpu: &Gpu, elements: usize) -> Result<()> {
        let codes = gpu.alloc(elements.max(16), "FP8 activations")?;
        let scale = gpu.alloc(32, "FP8 activation scale")?;
        self.fp8_inputs = Some((codes, scale));
        Ok(())
    }

    /// Times the GEMV kernel against cuBLASLt for each group of same-shape weights in `groups` and
    /// 1..=`max_rows` (at most GEMV_MAX_TOKENS) rows, and keeps the faster per shape; cuBLASLt's
    /// side is the fastest of its candidate algorithms, which the shape then keeps. Each side
    /// runs the group's products back to back, as a step runs them layer after layer (median of 5
    /// such chains): a weight that fits in L2, timed again and again alone, would be read from
    /// L2, and a kernel's start and end would not overlap its neighbours' as they do in a step.
    /// `x` and `y` are scratch buffers large enough for the inputs and outputs.
    pub fn tune(
        &mut self,
        gpu: &Gpu,
        kernels: &Kernels,
        groups: &[Vec<Tensor>],
        x: &DeviceBuffer,
        y: &DeviceBuffer,
        max_rows: usize,
    ) -> Result<()> {
        let widest = groups.iter().flatten().map(|w| w.cols).max().unwrap_or(0);
        gpu.fill(x.ptr, 0x3c, (GEMV_MAX_TOKENS * widest * 2).min(x.bytes))?;
        let gemv_fits = |w: &Tensor| w.cols.is_multiple_of(gemv_k_step(w.dtype));
        for t in 1..=GEMV_MAX_TOKENS.min(max_rows) {
            for group in groups.iter().filter(|g| g.first().is_some_and(gemv_fits)) {
                let (rows, cols) = (group[0].rows, group[0].cols);
                let (input, output) = (x.tensor(DType::Bf16, t, cols), y.tensor(DType::Bf16, t, rows));
                // Each side with what it runs: cuBLASLt's FP8 product after the quantization.
                let operands = if group[0].dtype == DType::Fp8E4M3 { DType::Fp8E4M3 } else { DType::Bf16 };
                // A candidate cuBLASLt refuses for these operands is passed over (the Gemm offers at
                // least one); none running is the first refusal's error.
                let (mut gemm, mut fastest, mut refused) = (f64::INFINITY, 0, Ok(()));
                for index in 0..self.gemm.algorithms(t, rows, cols, operands, DType::Bf16)? {
                    self.gemm.use_algorithm(t, rows, cols, operands, DType::Bf16, index)?;
                    match gpu.median_ms(1, 5, || group.iter().try_for_each(|&w| self.gemm_product(gpu, kernels, input, w, output, false))) {
                        Ok(ms) if ms < gemm => (gemm, fastest) = (ms, index),
                        Ok(_) => {}
                        Err(e) => refused = refused.and(Err(e)),
                    }
                }
                if gemm.is_infinite() {
                    refused.with_context(|| format!("no cuBLASLt algorithm ran the {rows}x{cols} products of {t} rows"))?;
                }
                self.gemm.use_algorithm(t, rows, cols, operands, DType::Bf16, fastest)?;
                let gemv = gpu.median_ms(1, 5, || group.iter().try_for_each(|&w| kernels.gemv(gpu, input, w, output)))?;
                self.gemv_wins.insert((t, rows, cols), gemv < gemm);
            }
        }
        Ok(())
    }

    /// Where the kernel about to write `x` should add x's largest magnitude (its `amax` argument),
    /// so that an FP8 product of x right after it quantizes x without a pass of its own over x
    /// (`amax_bf16`): the amax word, zeroed, when this model's FP8 products quantize an input of
    /// x's size in two passes; else 0. Only the next product (`run` or `run_swiglu`) may take it,
    /// and only if it reads x: any other finds its amax itself.
    pub fn input_amax(&mut self, gpu: &Gpu, x: Tensor) -> Result<u64> {
        self.amax_written_for = None;
        let Some((_, scale)) = &self.fp8_inputs else { return Ok(0) };
        let elements = x.rows * x.cols;
        if x.dtype != DType::Bf16 || elements <= FP8_ONE_BLOCK_ELEMENTS {
            return Ok(0);
        }
        let amax = scale.at(16);
        gpu.fill(amax, 0, 4)?;
        self.amax_written_for = Some((x.ptr, elements));
        Ok(amax)
    }

    /// Whether the kernel that wrote `x` has put its amax in the word ([`Linear::input_amax`]);
    /// either way the note is spent.
    fn take_amax_written(&mut self, x: Tensor) -> bool {
        self.amax_written_for.take() == Some((x.ptr, x.rows * x.cols))
    }

    /// Queues `out[t, n] = x[t, k] · w[n, k]ᵀ` on the GPU's stream.
    pub fn run(&mut self, gpu: &Gpu, kernels: &Kernels, x: Tensor, w: Tensor, out: Tensor) -> Result<()> {
        let amax_written = self.take_amax_written(x);
        if self.gemv_won(x, w) {
            kernels.gemv(gpu, x, w, out)
        } else {
            self.gemm_product(gpu, kernels, x, w, out, amax_written)
        }
    }

    /// `act[t, j] = silu(g) · u` of the fused gate/up product `x · gate_upᵀ` (gate rows first):
    /// in one GEMV launch where the GEMV won this shape, else the product into `scratch`
    /// (`[t, 2f]` bf16) and `silu_mul`, which also writes act's amax for the FP8 down product
    /// after it ([`Linear::input_amax`]). Both give the same bits.
    pub fn run_swiglu(&mut self, gpu: &Gpu, kernels: &Kernels, x: Tensor, gate_up: Tensor, act: Tensor, scratch: Tensor) -> Result<()> {
        let amax_written = self.take_amax_written(x);
        if self.gemv_won(x, gate_up) {
            return kernels.gemv_swiglu(gpu, x, gate_up, act);
        }
        self.gemm_product(gpu, kernels, x, gate_up, scratch, amax_written)?;
        let amax = self.input_amax(gpu, act)?;
        kernels.silu_mul(gpu, x.rows, act.cols, scratch.ptr, act.ptr, amax)
    }

    /// Whether the GEMV beat cuBLASLt on `x`'s rows of `w` when tuned.
    fn gemv_won(&self, x: Tensor, w: Tensor) -> bool {
        self.gemv_wins.get(&(x.rows, w.rows, w.cols)) == Some(&true)
    }

    /// The product through cuBLASLt, bf16 activations quantized first for an FP8 weight
    /// (`amax_written`: their amax is already in the word).
    fn gemm_product(&mut self, gpu: &Gpu, kernels: &Kernels, x: Tensor, w: Tensor, out: Tensor, amax_written: bool) -> Result<()> {
        let x = if w.dtype == DType::Fp8E4M3 && x.dtype == DType::Bf16 { self.quantize(gpu, kernels, x, amax_written)? } else { x };
        self.gemm.matmul(gpu, x, w, out)
    }

    /// `x` quantized to FP8 in the reserved buffer.
    fn quantize(&self, gpu: &Gpu, kernels: &Kernels, x: Tensor, amax_written: bool) -> Result<Tensor> {
        let Some((codes, scale)) = &self.fp8_inputs else {
            bail!("an FP8 product of {x} needs room for quantized activations (Linear::reserve_fp8_inputs)");
        };
        if x.rows * x.cols > codes.bytes {
            bail!("FP8 activations {x} exceed the {} reserved elements", codes.bytes);
        }
        let quantized = Tensor { scale: scale.ptr, ..codes.tensor(DType::Fp8E4M3, x.rows, x.cols) };
        kernels.quantize_fp8(gpu, x, quantized, scale.at(16), amax_written)?;
        Ok(quantized)
    }
}
