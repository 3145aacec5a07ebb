//! Linear layers on the GPU: `out = x · wᵀ` on typed tensors, through cuBLASLt or, for the few-row
//! shapes where it measured faster, the GEMV kernel. The choice is made per (rows, n, k) by
//! [`Linear::tune`], which times both on the real weights, each shape's layers back to back;
//! batch-invariant mode never tunes, so every row count takes the same arithmetic. For FP8 weights
//! the bf16 activations are quantized to FP8 with one dynamic scale a row (vLLM's dynamic
//! per-token scheme), so a token's codes do not depend on the other tokens of its step: for
//! cuBLASLt into a buffer reserved with [`Linear::reserve_fp8_inputs`], by the kernel that wrote
//! the activations where it can ([`Linear::input_codes`]) or else by a launch of their own, and
//! inside the FP8 GEMV kernel to the same codes (no launch of its own), so a product's arithmetic
//! does not depend on the choice. cuBLASLt's FP8 products on Hopper take one scale per operand
//! (its per-row mode needs a vector on the weight too and ran 5–16% slower on an H100), so they multiply by
//! the weight's scale only and leave each output row's activation scale, a power of two, to the
//! kernel that reads the output ([`RowScales`]; [`Linear::run`] applies them itself).

use super::device::{DeviceBuffer, Gpu};
use super::gemm::Gemm;
use super::kernels::{gemv_takes, Fp8Rows, Kernels, RowScales, GEMV_MAX_TOKENS, SILU_FP8_MAX_WIDTH};
use super::tensor::{DType, Tensor};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;

/// Room for an FP8 product's quantized input: the codes; two buffers of row scales, used in turn,
/// so that a product's output rows keep their scales ([`RowScales`]) until the kernel that reads
/// them has run, while the next input is quantized; and a device 1.0, the scale cuBLASLt is given
/// for the activations (each a buffer of its own: cuBLASLt refuses a scale pointer that is not
/// 16-byte aligned).
struct Fp8Inputs {
    codes: DeviceBuffer,
    scales: [DeviceBuffer; 2],
    next_scales: usize,
    one: DeviceBuffer,
}

impl Fp8Inputs {
    /// Codes of `rows × cols` in the buffer with the next row scales, if they fit.
    fn next(&mut self, rows: usize, cols: usize) -> Option<Tensor> {
        let scales = &self.scales[self.next_scales];
        if rows * cols > self.codes.bytes || rows * 4 > scales.bytes {
            return None;
        }
        self.next_scales ^= 1;
        Some(Tensor { scale: scales.ptr, ..self.codes.tensor(DType::Fp8E4M3, rows, cols) })
    }
}

pub struct Linear {
    gemm: Gemm,
    /// Per (rows, n, k) of up to GEMV_MAX_TOKENS rows: whether the GEMV kernel beat cuBLASLt.
    gemv_wins: HashMap<(usize, usize, usize), bool>,
    /// Quantized activations for FP8 products.
    fp8_inputs: Option<Fp8Inputs>,
    /// Activations whose codes the kernel that wrote them has put in the reserved buffer, and
    /// those codes ([`Linear::input_codes`]): the next product, if it reads them, takes the codes.
    codes_written: Option<(Tensor, Tensor)>,
}

impl Linear {
    pub fn new(gpu: &Gpu, batch_invariant: bool) -> Result<Self> {
        Ok(Linear { gemm: Gemm::new(gpu, batch_invariant)?, gemv_wins: HashMap::new(), fp8_inputs: None, codes_written: None })
    }

    /// Reserves room for the quantized activations of up to `rows` rows of `widest` values, the
    /// most any FP8 product of the model takes in one step.
    pub fn reserve_fp8_inputs(&mut self, gpu: &Gpu, rows: usize, widest: usize) -> Result<()> {
        let codes = gpu.alloc((rows * widest).max(16), "FP8 activations")?;
        let scales = [gpu.alloc((rows * 4).max(16), "FP8 activation scales")?, gpu.alloc((rows * 4).max(16), "FP8 activation scales")?];
        let one = gpu.upload(&[1.0f32, 0.0, 0.0, 0.0], "FP8 unit scale")?;
        self.fp8_inputs = Some(Fp8Inputs { codes, scales, next_scales: 0, one });
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
        for t in 1..=GEMV_MAX_TOKENS.min(max_rows) {
            for group in groups.iter().filter(|g| g.first().is_some_and(|&w| gemv_takes(t, w))) {
                let (rows, cols) = (group[0].rows, group[0].cols);
                let (input, output) = (x.tensor(DType::Bf16, t, cols), y.tensor(DType::Bf16, t, rows));
                // Each side with what it runs: cuBLASLt's FP8 product after the quantization.
                let operands = if group[0].dtype == DType::Fp8E4M3 { DType::Fp8E4M3 } else { DType::Bf16 };
                // A candidate cuBLASLt refuses for these operands is passed over (the Gemm offers at
                // least one); none running is the first refusal's error.
                let (mut gemm, mut fastest, mut refused) = (f64::INFINITY, 0, Ok(()));
                for index in 0..self.gemm.algorithms(t, rows, cols, operands, DType::Bf16)? {
                    self.gemm.use_algorithm(t, rows, cols, operands, DType::Bf16, index)?;
                    let mut chain = || group.iter().try_for_each(|&w| self.gemm_product(gpu, kernels, input, w, output, None).map(|_| ()));
                    match gpu.median_ms(1, 5, &mut chain) {
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

    /// Where the kernel about to write `x` should also write x's FP8 codes and row scales, so that
    /// an FP8 product of x right after it needs no quantization launch (`Linear::codes_for`);
    /// else none. Only the next product may take them, and only if it reads x: any other
    /// quantizes its input itself.
    pub fn input_codes(&mut self, x: Tensor) -> Fp8Rows {
        self.codes_written = self.codes_for(x).map(|codes| (x, codes));
        self.codes_written.map_or(Fp8Rows::default(), |(_, codes)| Fp8Rows { codes: codes.ptr, scales: codes.scale })
    }

    /// Room in the reserved buffer for x's codes and row scales, when this model's products are
    /// FP8 and x has more rows than the GEMV takes (its product then runs through cuBLASLt).
    fn codes_for(&mut self, x: Tensor) -> Option<Tensor> {
        if x.dtype != DType::Bf16 || x.rows <= GEMV_MAX_TOKENS {
            return None;
        }
        self.fp8_inputs.as_mut()?.next(x.rows, x.cols)
    }

    /// The codes of `x` that the kernel that wrote it put in the reserved buffer
    /// ([`Linear::input_codes`]), if it did; either way the note is spent.
    fn take_codes_written(&mut self, x: Tensor) -> Option<Tensor> {
        self.codes_written.take().filter(|&(written, _)| written == x).map(|(_, codes)| codes)
    }

    /// Queues `out[t, n] = x[t, k] · w[n, k]ᵀ` on the GPU's stream, every row scaled.
    pub fn run(&mut self, gpu: &Gpu, kernels: &Kernels, x: Tensor, w: Tensor, out: Tensor) -> Result<()> {
        let pending = self.run_leaving_row_scales(gpu, kernels, x, w, out)?;
        kernels.settle_row_scales(gpu, out, pending, false).map(|_| ())
    }

    /// [`Linear::run`], except that an FP8 product through cuBLASLt leaves its output rows'
    /// activation scales to the caller, who hands them to the kernel that reads `out`
    /// ([`RowScales`]; none where the rows are final). They stay valid until the second product
    /// after this one quantizes its input.
    pub fn run_leaving_row_scales(&mut self, gpu: &Gpu, kernels: &Kernels, x: Tensor, w: Tensor, out: Tensor) -> Result<RowScales> {
        let codes = self.take_codes_written(x);
        if self.gemv_won(x, w) {
            kernels.gemv(gpu, x, w, out)?;
            return Ok(RowScales::default());
        }
        self.gemm_product(gpu, kernels, x, w, out, codes)
    }

    /// The SwiGLU feed-forward `out = act · downᵀ`, `act[t, j] = silu(g) · u` of the fused gate/up
    /// product `x · gate_upᵀ` (gate rows first): `act` in one GEMV launch where the GEMV won that
    /// shape, else the product into `scratch` (`[t, 2f]` bf16) and `silu_mul`, which takes the
    /// product's row scales. Where the down product is FP8 and takes more rows than the GEMV,
    /// `silu_mul_fp8` writes act's codes and row scales straight into the FP8 input buffer
    /// instead, and `act` itself is not written. All give the same bits. The down product's row
    /// scales are left to the caller as [`Linear::run_leaving_row_scales`] leaves them, or
    /// applied here unless `leave_row_scales`.
    #[allow(clippy::too_many_arguments)]
    pub fn run_feed_forward(
        &mut self,
        gpu: &Gpu,
        kernels: &Kernels,
        x: Tensor,
        gate_up: Tensor,
        down: Tensor,
        act: Tensor,
        scratch: Tensor,
        out: Tensor,
        leave_row_scales: bool,
    ) -> Result<RowScales> {
        let codes = self.take_codes_written(x);
        let pending = if self.gemv_won(x, gate_up) {
            kernels.gemv_swiglu(gpu, x, gate_up, act)?;
            self.run_leaving_row_scales(gpu, kernels, act, down, out)?
        } else {
            let gate_up_scales = self.gemm_product(gpu, kernels, x, gate_up, scratch, codes)?;
            let act_codes = if down.dtype == DType::Fp8E4M3 && act.cols <= SILU_FP8_MAX_WIDTH { self.codes_for(act) } else { None };
            if let Some(act_codes) = act_codes {
                kernels.silu_mul_fp8(gpu, scratch.ptr, gate_up_scales, act_codes)?;
                self.gemm_codes(gpu, act_codes, down, out)?
            } else {
                kernels.silu_mul(gpu, x.rows, act.cols, scratch.ptr, gate_up_scales, act.ptr)?;
                self.run_leaving_row_scales(gpu, kernels, act, down, out)?
            }
        };
        kernels.settle_row_scales(gpu, out, pending, leave_row_scales)
    }

    /// Whether the GEMV beat cuBLASLt on `x`'s rows of `w` when tuned.
    fn gemv_won(&self, x: Tensor, w: Tensor) -> bool {
        self.gemv_wins.get(&(x.rows, w.rows, w.cols)) == Some(&true)
    }

    /// The product through cuBLASLt, bf16 activations quantized first for an FP8 weight (`codes`:
    /// their codes, already written by the kernel that wrote them); the output rows' scales still
    /// to apply, for an FP8 weight.
    fn gemm_product(
        &mut self,
        gpu: &Gpu,
        kernels: &Kernels,
        x: Tensor,
        w: Tensor,
        out: Tensor,
        codes: Option<Tensor>,
    ) -> Result<RowScales> {
        if w.dtype != DType::Fp8E4M3 || x.dtype != DType::Bf16 {
            self.gemm.matmul(gpu, x, w, out)?;
            return Ok(RowScales::default());
        }
        let codes = match codes {
            Some(codes) => codes,
            None => self.quantize(gpu, kernels, x)?,
        };
        self.gemm_codes(gpu, codes, w, out)
    }

    /// The product of quantized activations (their row scales at `codes.scale`) through cuBLASLt,
    /// which is given a unit scale for them; returns those row scales, still to apply.
    fn gemm_codes(&mut self, gpu: &Gpu, codes: Tensor, w: Tensor, out: Tensor) -> Result<RowScales> {
        let one = self.fp8_inputs.as_ref().context("FP8 activations without a reserved buffer")?.one.ptr;
        self.gemm.matmul(gpu, Tensor { scale: one, ..codes }, w, out)?;
        Ok(RowScales(codes.scale))
    }

    /// `x` quantized to FP8, one scale a row, in the reserved buffer.
    fn quantize(&mut self, gpu: &Gpu, kernels: &Kernels, x: Tensor) -> Result<Tensor> {
        let Some(inputs) = &mut self.fp8_inputs else {
            bail!("an FP8 product of {x} needs room for quantized activations (Linear::reserve_fp8_inputs)");
        };
        let Some(quantized) = inputs.next(x.rows, x.cols) else {
            bail!("FP8 activations {x} exceed the {} elements reserved", inputs.codes.bytes);
        };
        kernels.quantize_fp8_rows(gpu, x, quantized)?;
        Ok(quantized)
    }
}
