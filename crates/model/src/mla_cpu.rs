//! DeepSeek's multi-head latent attention on the CPU, over a paged cache of compressed latents.
//!
//! Each token's cache row is its RMS-normed latent (`kv_lora_rank`) followed by its rotated
//! rotary key (`qk_rope_head_dim`). Attention runs in one of two forms that give the same result:
//! - **expanded:** the sequence's cached latents are multiplied out by `kv_b` into every head's
//!   key (no-RoPE part) and value, and attention runs over those;
//! - **absorbed:** each head's key up-projection `W_UK` is folded into its query
//!   (`q̃ = W_UKᵀ q_nope`, scored against the latent itself) and its value up-projection `W_UV`
//!   into its output (`W_UV · Σ p·latent`), so nothing is expanded.
//!
//! By default prefill chunks run expanded and one-token decode steps absorbed, as TensorRT-LLM
//! and vLLM run them; [`MlaForm`] can force either form for every sequence.

use crate::config::{MlaConfig, ModelConfig};
use crate::moe_cpu::Project;
use crate::plan::LatentAttention;
use lumen_backend::cpu::{self, PackedMatrix, RopeTable};
use lumen_backend::{AttentionSeq, KvStorage};
use rayon::prelude::*;

/// Which form of attention runs a sequence's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MlaForm {
    /// Sequences of several tokens (prefill) expanded, one-token steps (decode) absorbed.
    #[default]
    ByPhase,
    Expanded,
    Absorbed,
}

/// One layer's `kv_b` split per head for the absorbed form: `uk_t[h]` is `W_UK_hᵀ`
/// (`[kv_lora_rank, qk_nope]`), `uv[h]` is `W_UV_h` (`[v_head, kv_lora_rank]`).
pub struct AbsorbedHeads {
    uk_t: Vec<PackedMatrix>,
    uv: Vec<PackedMatrix>,
}

impl AbsorbedHeads {
    pub fn from_kv_b(kv_b: &PackedMatrix, m: &MlaConfig, heads: usize) -> Self {
        let w = kv_b.unpack();
        let (nope, v, l) = (m.qk_nope_head_dim, m.v_head_dim, m.kv_lora_rank);
        let (mut uk_t, mut uv) = (Vec::with_capacity(heads), Vec::with_capacity(heads));
        for rows in w.chunks((nope + v) * l) {
            let (uk, v_rows) = rows.split_at(nope * l);
            let mut transposed = vec![0.0f32; l * nope];
            for n in 0..nope {
                for j in 0..l {
                    transposed[j * nope + n] = uk[n * l + j];
                }
            }
            uk_t.push(PackedMatrix::pack(&transposed, l, nope));
            uv.push(PackedMatrix::pack(v_rows, v, l));
        }
        AbsorbedHeads { uk_t, uv }
    }
}

/// What one step tells every layer's attention.
pub struct MlaStep<'a> {
    pub positions: &'a [usize],
    pub slots: &'a [usize],
    pub seqs: &'a [AttentionSeq<'a>],
    pub rope: &'a RopeTable,
    pub form: MlaForm,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn softmax_in_place(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    scores.iter_mut().for_each(|s| *s /= sum);
}

/// Runs layer `layer`'s latent attention for the `t` rows of `x` (normed hidden states), writing
/// every token's latent row into `kv` and the heads' outputs (`[t, heads·v_head]`, before the
/// output projection) into `out`. `project` runs the layer projections as the decoder does.
#[allow(clippy::too_many_arguments)]
pub fn mla_attention(
    a: &LatentAttention<PackedMatrix, Vec<f32>>,
    absorbed: &AbsorbedHeads,
    c: &ModelConfig,
    x: &[f32],
    t: usize,
    step: &MlaStep,
    kv: &mut KvStorage,
    layer: usize,
    project: &Project,
    out: &mut [f32],
) {
    let m = c.mla.as_ref().expect("latent attention is planned from an MLA config");
    let heads = c.num_heads;
    let (nope, rope, v, l) = (m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim, m.kv_lora_rank);
    let qk = nope + rope;

    let mut q = vec![0.0f32; t * heads * qk];
    match (&a.q_a, &a.q_a_norm) {
        (Some(q_a), Some(norm)) => {
            let mut low = vec![0.0f32; t * q_a.n];
            project(x, t, q_a, &mut low);
            let mut normed = vec![0.0f32; low.len()];
            cpu::rms_norm(&low, norm, c.rms_eps, &mut normed);
            project(&normed, t, &a.q, &mut q);
        }
        _ => project(x, t, &a.q, &mut q),
    }
    let mut q_pe: Vec<f32> = q.chunks(qk).flat_map(|head| head[nope..].iter().copied()).collect();
    cpu::apply_rope(&mut q_pe, heads, step.positions, step.rope);

    let width = m.latent_width();
    let mut compressed = vec![0.0f32; t * width];
    project(x, t, &a.kv_a, &mut compressed);
    let latent: Vec<f32> = compressed.chunks(width).flat_map(|row| row[..l].iter().copied()).collect();
    let mut normed = vec![0.0f32; t * l];
    cpu::rms_norm(&latent, &a.kv_a_norm, c.rms_eps, &mut normed);
    let mut k_pe: Vec<f32> = compressed.chunks(width).flat_map(|row| row[l..].iter().copied()).collect();
    cpu::apply_rope(&mut k_pe, 1, step.positions, step.rope);
    let rows: Vec<f32> = normed.chunks(l).zip(k_pe.chunks(rope)).flat_map(|(c, k)| c.iter().chain(k).copied()).collect();
    kv.write_latent(layer, step.slots, &rows);

    let scale = c.mla_softmax_scale().expect("an MLA config") as f32;
    let kv: &KvStorage = kv;
    for seq in step.seqs {
        let n = seq.first_pos + seq.len;
        let cached: Vec<f32> = (0..n)
            .flat_map(|p| {
                let slot = seq.block_table[p / kv.block_size] as usize * kv.block_size + p % kv.block_size;
                kv.latent_row(layer, slot).iter().copied()
            })
            .collect();
        let expanded = match step.form {
            MlaForm::Expanded => true,
            MlaForm::Absorbed => false,
            MlaForm::ByPhase => seq.len > 1,
        };
        let rows = &mut out[seq.start * heads * v..(seq.start + seq.len) * heads * v];
        let q_of = |i: usize, h: usize| {
            let tok = seq.start + i;
            let head = &q[(tok * heads + h) * qk..(tok * heads + h + 1) * qk];
            (&head[..nope], &q_pe[(tok * heads + h) * rope..(tok * heads + h + 1) * rope])
        };
        if expanded {
            let latents: Vec<f32> = cached.chunks(width).flat_map(|r| r[..l].iter().copied()).collect();
            let mut keys_values = vec![0.0f32; n * heads * (nope + v)];
            cpu::matmul(&latents, n, &a.kv_b, &mut keys_values);
            rows.par_chunks_mut(heads * v).enumerate().for_each(|(i, row)| {
                let pos = seq.first_pos + i;
                let mut scores = vec![0.0f32; pos + 1];
                for (h, o) in row.chunks_mut(v).enumerate() {
                    let (qn, qr) = q_of(i, h);
                    for (j, s) in scores.iter_mut().enumerate() {
                        let kvh = &keys_values[(j * heads + h) * (nope + v)..(j * heads + h + 1) * (nope + v)];
                        *s = (dot(qn, &kvh[..nope]) + dot(qr, &cached[j * width + l..(j + 1) * width])) * scale;
                    }
                    softmax_in_place(&mut scores);
                    o.fill(0.0);
                    for (j, &p) in scores.iter().enumerate() {
                        let value = &keys_values[(j * heads + h) * (nope + v) + nope..(j * heads + h + 1) * (nope + v)];
                        o.iter_mut().zip(value).for_each(|(o, v)| *o += p * v);
                    }
                }
            });
        } else {
            rows.par_chunks_mut(heads * v).enumerate().for_each(|(i, row)| {
                let pos = seq.first_pos + i;
                let mut scores = vec![0.0f32; pos + 1];
                let (mut q_latent, mut o_latent) = (vec![0.0f32; l], vec![0.0f32; l]);
                for (h, o) in row.chunks_mut(v).enumerate() {
                    let (qn, qr) = q_of(i, h);
                    cpu::matmul(qn, 1, &absorbed.uk_t[h], &mut q_latent);
                    for (j, s) in scores.iter_mut().enumerate() {
                        let r = &cached[j * width..(j + 1) * width];
                        *s = (dot(&q_latent, &r[..l]) + dot(qr, &r[l..])) * scale;
                    }
                    softmax_in_place(&mut scores);
                    o_latent.fill(0.0);
                    for (j, &p) in scores.iter().enumerate() {
                        o_latent.iter_mut().zip(&cached[j * width..j * width + l]).for_each(|(o, c)| *o += p * c);
                    }
                    cpu::matmul(&o_latent, 1, &absorbed.uv[h], o);
                }
            });
        }
    }
}
