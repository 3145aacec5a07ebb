//! Causal attention over the paged KV cache for a flattened batch that mixes prefill chunks and
//! decode tokens. Each query token attends to its own sequence's positions `0..=pos` (or the last
//! `window` of them), read through the block table, so earlier prefill chunks are seen too. A
//! layer with attention sinks (GPT-OSS) adds one learned logit per query head to each softmax's
//! denominator, a position whose value is zero.

use super::kv::{AttentionSeq, KvStorage};
use super::SharedMut;
use rayon::prelude::*;

/// Called for each cached position a query attends to, with its key and value rows.
type PositionVisitor<'a> = dyn FnMut(usize, &[f32], &[f32]) + 'a;

/// Dot product with eight lane accumulators folded in a fixed order: vectorisable, and the same
/// result for a given pair of vectors wherever it is computed.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// What a layer's attention adds to plain causal attention.
#[derive(Debug, Clone, Copy, Default)]
pub struct LayerAttention<'a> {
    /// Attend to at most this many most recent positions.
    pub window: Option<usize>,
    /// One logit per query head that joins its softmax's denominator.
    pub sinks: Option<&'a [f32]>,
}

/// Writes `out[token, head]` for every query head of every token of every sequence.
///
/// `q` is `[tokens, heads × head_dim]`; the current tokens' keys and values must already be in
/// `kv`. With grouped-query attention, query head `h` reads KV head `h / (heads / kv_heads)`; one
/// work item serves a token's whole group, so each key and value is loaded once for the group.
pub fn paged_attention(
    q: &[f32],
    heads: usize,
    kv: &KvStorage,
    layer: usize,
    seqs: &[AttentionSeq],
    variant: LayerAttention,
    out: &mut [f32],
) {
    let LayerAttention { window, sinks } = variant;
    let hd = kv.head_dim;
    let group = heads / kv.kv_heads;
    let (block_size, slot_width) = (kv.block_size, kv.kv_heads * hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let work: Vec<(usize, usize, usize, usize)> = seqs
        .iter()
        .enumerate()
        .flat_map(|(si, s)| (0..s.len).flat_map(move |i| (0..kv.kv_heads).map(move |g| (si, s.start + i, s.first_pos + i, g))))
        .collect();
    let out_ptr = SharedMut::new(out);
    work.par_iter().for_each_init(Vec::new, |scores: &mut Vec<f32>, &(si, tok, pos, kvh)| {
        let table = seqs[si].block_table;
        let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let span = pos + 1 - first;
        let heads_of_group = kvh * group..(kvh + 1) * group;
        scores.clear();
        scores.resize(group * span, 0.0);
        let visit = |f: &mut PositionVisitor| {
            let mut p = first;
            while p <= pos {
                let (keys, values) = kv.block(layer, table[p / block_size]);
                let end = ((p / block_size + 1) * block_size).min(pos + 1);
                for position in p..end {
                    let at = (position % block_size) * slot_width + kvh * hd;
                    f(position - first, &keys[at..at + hd], &values[at..at + hd]);
                }
                p = end;
            }
        };
        visit(&mut |i, k, _| {
            for (g, h) in heads_of_group.clone().enumerate() {
                scores[g * span + i] = dot(&q[(tok * heads + h) * hd..(tok * heads + h + 1) * hd], k) * scale;
            }
        });
        for (g, row) in scores.chunks_mut(span).enumerate() {
            let sink = sinks.map(|s| s[kvh * group + g]);
            let max = row.iter().chain(&sink).fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let mut denom = sink.map_or(0.0, |s| (s - max).exp());
            for s in row.iter_mut() {
                *s = (*s - max).exp();
                denom += *s;
            }
            row.iter_mut().for_each(|s| *s /= denom);
        }
        // SAFETY: each (token, KV head) work item writes only its own group's output vectors.
        let o = unsafe { out_ptr.slice((tok * heads + kvh * group) * hd, group * hd) };
        o.fill(0.0);
        visit(&mut |i, _, v| {
            for g in 0..group {
                let w = scores[g * span + i];
                for (o, v) in o[g * hd..(g + 1) * hd].iter_mut().zip(v) {
                    *o += w * v;
                }
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_position_returns_its_value_and_blocks_are_followed() {
        let mut kv = KvStorage::new(1, 4, 2, 1, 2);
        // The sequence lives in blocks 3 then 1: positions 0,1 in block 3, position 2 in block 1.
        kv.write(0, &[6, 7, 2], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[10.0, 0.0, 0.0, 20.0, 5.0, 5.0]);
        let table = [3u32, 1];
        let q = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let seqs = [AttentionSeq { start: 0, len: 3, first_pos: 0, block_table: &table }];
        let mut out = vec![0.0; 6];
        paged_attention(&q, 1, &kv, 0, &seqs, LayerAttention::default(), &mut out);
        assert_eq!(&out[0..2], &[10.0, 0.0], "position 0 sees only itself");
        assert_eq!(&out[2..4], &[5.0, 10.0], "position 1 averages two equal-score values");
        let want = [(10.0 + 0.0 + 5.0) / 3.0, (0.0 + 20.0 + 5.0) / 3.0];
        assert!((out[4] - want[0]).abs() < 1e-5 && (out[5] - want[1]).abs() < 1e-5, "{out:?}");
        let mut windowed = vec![0.0; 6];
        paged_attention(&q, 1, &kv, 0, &seqs, LayerAttention { window: Some(1), sinks: None }, &mut windowed);
        assert_eq!(&windowed[4..6], &[5.0, 5.0], "a window of one sees only the token itself");
        let mut sunk = vec![0.0; 6];
        let sinks = [3f32.ln()];
        paged_attention(&q, 1, &kv, 0, &seqs, LayerAttention { window: None, sinks: Some(&sinks) }, &mut sunk);
        assert!((sunk[0] - 2.5).abs() < 1e-5 && sunk[1].abs() < 1e-6, "a sink of ln 3 against one score of 0 leaves 1/4: {sunk:?}");
        assert!((sunk[4] - want[0] / 2.0).abs() < 1e-5, "against three scores of 0 it leaves 3/6: {sunk:?}");
    }
}
