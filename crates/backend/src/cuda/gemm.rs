//! Matrix products through cuBLASLt: `out[t, n] = x[t, k] · w[n, k]ᵀ` on typed tensors, with
//! bf16 operands, or FP8 E4M3 operands with their scales passed by device pointer, f32
//! accumulation, and bf16 or f32 output (the output tensor's type says which). FP8 products
//! accumulate in the tensor cores' fast mode, as TensorRT-LLM's FP8 products do: cuBLASLt's
//! default promotes partial sums to f32 registers every few k-steps, which costs throughput on
//! Hopper; `LUMEN_FP8_FAST_ACCUM=0` keeps that default. Each shape and
//! operand type keeps the heuristic's candidate algorithms (up to 8, with a 32 MiB workspace) and
//! runs its first unless [`Gemm::use_algorithm`] picked another (the tuner times them). In
//! batch-invariant mode only algorithms without split-K are candidates, so a row's reduction order
//! does not depend on how many rows share the product.

use super::device::{DeviceBuffer, Gpu};
use super::tensor::{DType, Tensor};
use anyhow::{anyhow, bail, Result};
use cudarc::cublaslt::{result as lt, sys};
use std::collections::HashMap;
use std::ffi::c_void;

const WORKSPACE_BYTES: usize = 32 << 20;
const CANDIDATES: usize = 8;

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    /// The heuristic's usable algorithms, best first, and the one products run.
    algos: Vec<sys::cublasLtMatmulAlgo_t>,
    chosen: usize,
}

pub struct Gemm {
    handle: sys::cublasLtHandle_t,
    workspace: DeviceBuffer,
    plans: HashMap<(usize, usize, usize, DType, DType), Plan>,
    batch_invariant: bool,
    /// FP8 products accumulate in the tensor cores' fast mode (`LUMEN_FP8_FAST_ACCUM=0` turns it
    /// off).
    fp8_fast_accumulation: bool,
}

unsafe impl Send for Gemm {}

/// Whether FP8 products accumulate in the fast mode, from `LUMEN_FP8_FAST_ACCUM` (on unless "0").
pub fn fp8_fast_accumulation() -> bool {
    std::env::var("LUMEN_FP8_FAST_ACCUM").map_or(true, |v| v != "0")
}

fn check(what: &str, r: Result<(), lt::CublasError>) -> Result<()> {
    r.map_err(|e| anyhow!("cuBLASLt {what}: {e:?}"))
}

/// Sets the matmul descriptor's `attribute` to `value` (its type is the attribute's, as cuBLASLt
/// documents it).
fn set_desc_attribute<T>(desc: sys::cublasLtMatmulDesc_t, attribute: sys::cublasLtMatmulDescAttributes_t, value: &T) -> Result<()> {
    check(&format!("set {attribute:?}"), unsafe {
        lt::set_matmul_desc_attribute(desc, attribute, value as *const T as *const c_void, std::mem::size_of::<T>())
    })
}

impl Gemm {
    pub fn new(gpu: &Gpu, batch_invariant: bool) -> Result<Self> {
        if !unsafe { sys::is_culib_present() } {
            bail!("cuBLASLt (libcublasLt.so) could not be loaded; set LD_LIBRARY_PATH to the CUDA toolkit's lib directory");
        }
        gpu.bind()?;
        let handle = lt::create_handle().map_err(|e| anyhow!("cublasLtCreate: {e:?}"))?;
        let workspace = gpu.alloc(WORKSPACE_BYTES, "the cuBLASLt workspace")?;
        Ok(Gemm { handle, workspace, plans: HashMap::new(), batch_invariant, fp8_fast_accumulation: fp8_fast_accumulation() })
    }

    fn plan(&mut self, t: usize, n: usize, k: usize, input: DType, out: DType) -> Result<&mut Plan> {
        let key = (t, n, k, input, out);
        if !self.plans.contains_key(&key) {
            let plan = self.make_plan(t, n, k, input, out).map_err(|e| anyhow!("GEMM {t}x{n}x{k} ({input} in, {out} out): {e}"))?;
            self.plans.insert(key, plan);
        }
        Ok(self.plans.get_mut(&key).expect("inserted above"))
    }

    fn make_plan(&self, t: usize, n: usize, k: usize, input: DType, out: DType) -> Result<Plan> {
        use sys::cudaDataType_t::{CUDA_R_16BF, CUDA_R_32F, CUDA_R_8F_E4M3};
        let desc = lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, CUDA_R_32F)
            .map_err(|e| anyhow!("cublasLtMatmulDescCreate: {e:?}"))?;
        set_desc_attribute(desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, &1i32)?;
        let layout = |ty, rows: usize, cols: usize, ld: usize| {
            lt::create_matrix_layout(ty, rows as u64, cols as u64, ld as i64).map_err(|e| anyhow!("cublasLtMatrixLayoutCreate: {e:?}"))
        };
        let operand = if input == DType::Fp8E4M3 { CUDA_R_8F_E4M3 } else { CUDA_R_16BF };
        if input == DType::Fp8E4M3 && self.fp8_fast_accumulation {
            // Set before the heuristic is asked, which offers the algorithms of this mode.
            set_desc_attribute(desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_FAST_ACCUM, &1i8)?;
        }
        let a = layout(operand, k, n, k)?;
        let b = layout(operand, k, t, k)?;
        let d = layout(if out == DType::F32 { CUDA_R_32F } else { CUDA_R_16BF }, n, t, n)?;
        let pref = lt::create_matmul_pref().map_err(|e| anyhow!("cublasLtMatmulPreferenceCreate: {e:?}"))?;
        let ws = WORKSPACE_BYTES as u64;
        check("set workspace", unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                8,
            )
        })?;
        if self.batch_invariant {
            // Only algorithms that need no reduction across K slices (no split-K).
            let none: u32 = 0;
            check("set reduction scheme", unsafe {
                lt::set_matmul_pref_attribute(
                    pref,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                    &none as *const u32 as *const c_void,
                    4,
                )
            })?;
        }
        let mut results: [sys::cublasLtMatmulHeuristicResult_t; CANDIDATES] = unsafe { std::mem::zeroed() };
        let mut count = 0i32;
        let found = unsafe {
            sys::cublasLtMatmulAlgoGetHeuristic(self.handle, desc, a, b, d, d, pref, CANDIDATES as i32, results.as_mut_ptr(), &mut count)
        };
        unsafe {
            let _ = lt::destroy_matmul_pref(pref);
        }
        check("heuristic", found.result())?;
        let algos: Vec<_> = results[..count.max(0) as usize]
            .iter()
            .filter(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && (!self.batch_invariant || split_k(&r.algo) <= 1))
            .map(|r| r.algo)
            .collect();
        if algos.is_empty() {
            bail!("cuBLASLt offers no algorithm for this shape");
        }
        Ok(Plan { desc, a, b, d, algos, chosen: 0 })
    }

    /// How many candidate algorithms the product of `t` rows by an `n × k` weight (`input`
    /// operands, `out` output) has; [`Gemm::use_algorithm`] picks one by index.
    pub fn algorithms(&mut self, t: usize, n: usize, k: usize, input: DType, out: DType) -> Result<usize> {
        Ok(self.plan(t, n, k, input, out)?.algos.len())
    }

    /// Runs that shape's products with its `index`-th candidate algorithm from now on.
    pub fn use_algorithm(&mut self, t: usize, n: usize, k: usize, input: DType, out: DType, index: usize) -> Result<()> {
        let plan = self.plan(t, n, k, input, out)?;
        if index >= plan.algos.len() {
            bail!("GEMM {t}x{n}x{k}: algorithm {index} asked for, {} offered", plan.algos.len());
        }
        plan.chosen = index;
        Ok(())
    }

    /// Queues `out[t, n] = x[t, k] · w[n, k]ᵀ` on the GPU's stream; FP8 operands are multiplied
    /// by their scales.
    pub fn matmul(&mut self, gpu: &Gpu, x: Tensor, w: Tensor, out: Tensor) -> Result<()> {
        let (t, n, k) = check_product(x, w, out)?;
        let stream = gpu.stream as sys::cudaStream_t;
        let (ws, ws_bytes) = (self.workspace.ptr, self.workspace.bytes);
        let handle = self.handle;
        let plan = self.plan(t, n, k, x.dtype, out.dtype)?;
        if x.dtype == DType::Fp8E4M3 {
            // cuBLASLt's A is the weight, B the activations.
            for (attribute, scale) in [
                (sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, w.scale),
                (sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, x.scale),
            ] {
                set_desc_attribute(plan.desc, attribute, &scale)?;
            }
        }
        let (w, x, out) = (w.ptr, x.ptr, out.ptr);
        let (alpha, beta) = (1.0f32, 0.0f32);
        let r = unsafe {
            lt::matmul(
                handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                w as *const c_void,
                plan.a,
                x as *const c_void,
                plan.b,
                out as *const c_void,
                plan.d,
                out as *mut c_void,
                plan.d,
                &plan.algos[plan.chosen],
                ws as *mut c_void,
                ws_bytes,
                stream,
            )
        };
        r.map_err(|e| anyhow!("cuBLASLt matmul {t}x{n}x{k}: {e:?}"))
    }
}

/// The `(t, n, k)` of `out = x · wᵀ`, or why the operands do not make that product: shapes must
/// agree, inputs be both bf16 or both scaled FP8, and the output bf16 or f32.
pub fn check_product(x: Tensor, w: Tensor, out: Tensor) -> Result<(usize, usize, usize)> {
    if x.cols != w.cols || out.rows != x.rows || out.cols != w.rows {
        bail!("matrix product {x} · ({w})ᵀ → {out}: the shapes do not agree");
    }
    let operand = |t: Tensor| t.dtype == DType::Bf16 || (t.dtype == DType::Fp8E4M3 && t.scale != 0);
    if !operand(x) || !operand(w) || x.dtype != w.dtype {
        bail!("matrix product {x} · ({w})ᵀ → {out}: bf16 inputs, or scaled FP8 inputs, expected");
    }
    if out.dtype == DType::Fp8E4M3 {
        bail!("matrix product {x} · ({w})ᵀ → {out}: a bf16 or f32 output expected");
    }
    Ok((x.rows, w.rows, x.cols))
}

fn split_k(algo: &sys::cublasLtMatmulAlgo_t) -> i32 {
    let mut value = 0i32;
    let mut written = 0usize;
    let r = unsafe {
        sys::cublasLtMatmulAlgoConfigGetAttribute(
            algo,
            sys::cublasLtMatmulAlgoConfigAttributes_t::CUBLASLT_ALGO_CONFIG_SPLITK_NUM,
            &mut value as *mut i32 as *mut c_void,
            4,
            &mut written,
        )
    };
    if r == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        value
    } else {
        i32::MAX
    }
}

impl Drop for Gemm {
    fn drop(&mut self) {
        unsafe {
            for plan in self.plans.values() {
                let _ = lt::destroy_matrix_layout(plan.a);
                let _ = lt::destroy_matrix_layout(plan.b);
                let _ = lt::destroy_matrix_layout(plan.d);
                let _ = lt::destroy_matmul_desc(plan.desc);
            }
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(dtype: DType, rows: usize, cols: usize) -> Tensor {
        Tensor { ptr: 0, dtype, rows, cols, scale: 0 }
    }

    #[test]
    fn products_are_checked_by_shape_and_type() {
        use DType::*;
        assert_eq!(check_product(t(Bf16, 3, 64), t(Bf16, 100, 64), t(F32, 3, 100)).unwrap(), (3, 100, 64));
        assert_eq!(check_product(t(Bf16, 3, 64), t(Bf16, 100, 64), t(Bf16, 3, 100)).unwrap(), (3, 100, 64));
        let e = check_product(t(Bf16, 3, 64), t(Bf16, 100, 32), t(F32, 3, 100)).unwrap_err().to_string();
        assert!(e.contains("bf16[3, 64] · (bf16[100, 32])ᵀ → f32[3, 100]") && e.contains("shapes"), "{e}");
        let e = check_product(t(F32, 3, 64), t(Bf16, 100, 64), t(F32, 3, 100)).unwrap_err().to_string();
        assert!(e.contains("bf16 inputs"), "{e}");
        let fp8 = |rows, cols| Tensor { scale: 8, ..t(Fp8E4M3, rows, cols) };
        assert_eq!(check_product(fp8(3, 64), fp8(100, 64), t(Bf16, 3, 100)).unwrap(), (3, 100, 64));
        for (x, w, out) in [
            (t(Bf16, 3, 64), fp8(100, 64), t(Bf16, 3, 100)),
            (fp8(3, 64), t(Bf16, 100, 64), t(Bf16, 3, 100)),
            (t(Bf16, 3, 64), t(Fp8E4M3, 100, 64), t(Bf16, 3, 100)),
            (fp8(3, 64), fp8(100, 64), fp8(3, 100)),
        ] {
            assert!(check_product(x, w, out).is_err(), "{x} · ({w})ᵀ → {out} must be refused (mixed, unscaled or FP8 out)");
        }
    }
}
