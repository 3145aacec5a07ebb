//! DeepSeek's multi-head latent attention on the CPU: the absorbed form (the key and value
//! up-projections folded into the query and the output, attention against the cached latents)
//! gives the expanded form's logits, in one pass and as prefill plus decode steps; the cache
//! holds one latent row per token and layer.

use lumen_backend::AttentionSeq;
use lumen_model::mla_cpu::MlaForm;
use lumen_model::{load_model, Executor, ForwardBatch};

/// Logits of every position of `tokens`, fed in `chunks` of one cache, under `form`.
fn logits(preset: &str, form: MlaForm, tokens: &[u32], chunks: &[usize]) -> Vec<f32> {
    let mut model = load_model(preset).unwrap();
    let Executor::Cpu(decoder) = &mut model.executor else { unreachable!("loaded on the CPU") };
    decoder.mla_form = form;
    let mut kv = decoder.new_kv_storage(tokens.len().div_ceil(16), 16);
    let table: Vec<u32> = (0..tokens.len().div_ceil(16) as u32).rev().collect();
    let (mut out, mut at) = (Vec::new(), 0);
    for &n in chunks {
        let positions: Vec<usize> = (at..at + n).collect();
        let slots: Vec<usize> = positions.iter().map(|&p| table[p / 16] as usize * 16 + p % 16).collect();
        let seqs = [AttentionSeq { start: 0, len: n, first_pos: at, block_table: &table }];
        let rows: Vec<usize> = (0..n).collect();
        let batch = ForwardBatch { tokens: &tokens[at..at + n], positions: &positions, slots: &slots, seqs: &seqs, logit_rows: &rows };
        out.extend(decoder.forward(&batch, &mut kv));
        at += n;
    }
    out
}

#[test]
fn absorbed_decode_gives_the_expanded_prefills_logits() {
    let tokens: Vec<u32> = (0..21u32).map(|i| (i * 97 + 11) % 512).collect();
    for preset in ["tiny-deepseek-v3", "tiny-deepseek-v2-lite"] {
        let expanded = logits(preset, MlaForm::Expanded, &tokens, &[21]);
        let absorbed = logits(preset, MlaForm::Absorbed, &tokens, &[21]);
        let stepped = logits(preset, MlaForm::ByPhase, &tokens, &[12, 1, 1, 1, 6]);
        let rms = (expanded.iter().map(|v| v * v).sum::<f32>() / expanded.len() as f32).sqrt();
        for (name, other) in [("absorbed", &absorbed), ("prefill then absorbed decode steps", &stepped)] {
            let worst = expanded.iter().zip(other.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst <= 1e-4 * rms.max(1.0), "{preset}, {name}: logits differ by {worst} (rms {rms})");
        }
    }
}

#[test]
fn the_cache_holds_one_latent_row_per_token_and_layer() {
    let model = load_model("tiny-deepseek-v3").unwrap();
    let decoder = model.cpu_decoder().unwrap();
    let kv = decoder.new_kv_storage(2, 16);
    // kv_lora_rank 32 + qk_rope_head_dim 8, one row, no separate values.
    assert_eq!((kv.kv_heads, kv.head_dim), (1, 40));
    assert_eq!(model.config.kv_values_per_token_per_layer(), 40);
    let v3 = lumen_model::presets::preset_config("deepseek-v3").unwrap();
    let mha = v3.num_heads * ((128 + 64) + 128);
    assert_eq!(v3.kv_values_per_token_per_layer(), 576);
    assert_eq!(mha / v3.kv_values_per_token_per_layer(), 71, "keys of 192 and values of 128 for 128 heads");
}
