//! Filling the layer plan from a checkpoint: every loader (GGUF, safetensors, presets) hands
//! tensors over by their Hugging Face names through one [`Fetch`] function, checked against the
//! planned shape, and [`stacked`] joins a weight's parts. The CPU keeps f32 ([`CpuWeights`]):
//! matrices packed for its matmul, vectors as they are; an FP8 matrix holds the values its codes
//! stand for, rounded first to bf16 as the CUDA loader rounds them.

use crate::config::ModelConfig;
use crate::plan::{Fill, ModelPlan, WeightDtype, WeightSpec, Weights};
use anyhow::{ensure, Result};
use lumen_backend::cpu::PackedMatrix;

/// Returns the f32 values of the tensor with this Hugging Face name, checked against `shape`.
pub type Fetch<'a> = dyn FnMut(&str, &[usize]) -> Result<Vec<f32>> + 'a;

/// The parts of `spec`, fetched in order (each part's values row-major), each cut to the block a
/// tensor-parallel rank keeps of it.
pub fn stacked(fetch: &mut Fetch, spec: &WeightSpec) -> Result<Vec<Vec<f32>>> {
    spec.parts.iter().map(|p| Ok(p.keep(fetch(&p.name, &p.shape)?))).collect()
}

/// The model's weights on the CPU.
pub type CpuWeights = Weights<PackedMatrix, Vec<f32>>;

struct CpuFill<'f, 'a> {
    fetch: &'f mut Fetch<'a>,
}

impl Fill for CpuFill<'_, '_> {
    type Matrix = PackedMatrix;
    type Vector = Vec<f32>;

    fn matrix(&mut self, spec: &WeightSpec) -> Result<PackedMatrix> {
        let (rows, cols) = spec.rows_cols();
        let mut values = stacked(self.fetch, spec)?.concat();
        if spec.dtype == WeightDtype::Fp8 {
            values.iter_mut().for_each(|v| *v = half::bf16::from_f32(*v).to_f32());
            lumen_backend::fp8::fake_quantize(&mut values);
        }
        Ok(PackedMatrix::pack(&values, rows, cols))
    }

    fn vector(&mut self, spec: &WeightSpec) -> Result<Vec<f32>> {
        Ok(stacked(self.fetch, spec)?.concat())
    }
}

/// Fills the plan of `c` with f32 weights; a tied output head is the embedding, packed.
pub fn assemble_cpu(c: &ModelConfig, plan: &ModelPlan, fetch: &mut Fetch) -> Result<(CpuWeights, Option<PackedMatrix>)> {
    let weights = plan.fill(&mut CpuFill { fetch })?;
    let tied_head = c.tie_word_embeddings.then(|| PackedMatrix::pack(&weights.embed, c.vocab_size, c.hidden_size));
    Ok((weights, tied_head))
}

/// Checks a loaded tensor's shape against the one the config implies.
pub fn check_shape(source: &str, name: &str, got: &[usize], want: &[usize]) -> Result<()> {
    ensure!(got == want, "{source}: tensor {name} has shape {got:?}, the config implies {want:?}");
    Ok(())
}
