//! GPT-OSS checkpoints keep each layer's experts fused, and this module reads the plan's
//! per-expert weights (`model.layers.L.mlp.experts.J.{gate,up,down}_proj.{weight,bias}`) out of
//! them. Under `model.layers.L.mlp.experts.`:
//! - `gate_up_proj` `[experts, hidden, 2·f]`, gate and up interleaved along the last dimension
//!   (gate at even columns), and `gate_up_proj_bias` `[experts, 2·f]`, interleaved the same way;
//! - `down_proj` `[experts, f, hidden]` and `down_proj_bias` `[experts, hidden]`;
//! - or, in an MXFP4 checkpoint, each matrix as `*_blocks` `[experts, out, in/32, 16]` and
//!   `*_scales` `[experts, out, in/32]` (out × in as a linear layer holds it: `2·f × hidden`, rows
//!   interleaved, and `hidden × f`), dequantized exactly by [`crate::mxfp4`].

use crate::config::ModelConfig;
use crate::mxfp4;
use crate::safetensors::SafetensorsDir;
use anyhow::{bail, ensure, Context, Result};

/// Which of an expert's weights a plan name asks for.
struct ExpertPart<'a> {
    layer: &'a str,
    expert: usize,
    /// `gate_proj`, `up_proj` or `down_proj`.
    projection: &'a str,
    bias: bool,
}

fn parse(name: &str) -> Option<ExpertPart<'_>> {
    let (layer, rest) = name.strip_prefix("model.layers.")?.split_once(".mlp.experts.")?;
    let (expert, rest) = rest.split_once('.')?;
    let (projection, kind) = rest.split_once('.')?;
    let bias = match kind {
        "weight" => false,
        "bias" => true,
        _ => return None,
    };
    matches!(projection, "gate_proj" | "up_proj" | "down_proj").then_some(())?;
    Some(ExpertPart { layer, expert: expert.parse().ok()?, projection, bias })
}

/// The shape and values of the per-expert weight `name` from the fused tensors; `None` when
/// `name` is not a per-expert weight.
pub fn fused_expert_weight(tensors: &SafetensorsDir, c: &ModelConfig, name: &str) -> Option<Result<(Vec<usize>, Vec<f32>)>> {
    let part = parse(name)?;
    Some(read(tensors, c, &part).with_context(|| format!("GPT-OSS expert weight {name}")))
}

fn read(tensors: &SafetensorsDir, c: &ModelConfig, part: &ExpertPart) -> Result<(Vec<usize>, Vec<f32>)> {
    let moe = c.moe.as_ref().context("a GPT-OSS config has experts")?;
    let (e, h, f) = (moe.num_experts, c.hidden_size, moe.expert_intermediate_size);
    let down = part.projection == "down_proj";
    let fused = format!("model.layers.{}.mlp.experts.{}", part.layer, if down { "down_proj" } else { "gate_up_proj" });
    // The interleaved half a gate or up weight takes: even rows (gate) or odd ones (up).
    let half = usize::from(part.projection == "up_proj");
    let expect = |name: &str, want: &[usize]| -> Result<()> {
        let got = tensors.shape(name).with_context(|| format!("tensor {name} is missing from the safetensors shards"))?;
        ensure!(got == want, "tensor {name} has shape {got:?}, the config implies {want:?}");
        Ok(())
    };
    if part.bias {
        let name = format!("{fused}_bias");
        expect(&name, &[e, if down { h } else { 2 * f }])?;
        let (_, values) = tensors.get_slice(&name, part.expert)?;
        return Ok(if down { (vec![h], values) } else { (vec![f], values.into_iter().skip(half).step_by(2).collect()) });
    }
    let (blocks, scales) = (format!("{fused}_blocks"), format!("{fused}_scales"));
    // Rows (out) and columns (in) of the matrix as a linear layer holds it.
    let (rows, cols) = if down { (h, f) } else { (2 * f, h) };
    let linear: Vec<f32> = if tensors.contains(&fused) {
        let stored = if down { [e, f, h] } else { [e, h, 2 * f] };
        expect(&fused, &stored)?;
        let (_, values) = tensors.get_slice(&fused, part.expert)?;
        // Stored `[in, out]`: transpose to `[out, in]`.
        (0..rows).flat_map(|r| (0..cols).map(move |k| (r, k))).map(|(r, k)| values[k * rows + r]).collect()
    } else if tensors.contains(&blocks) {
        ensure!(cols % mxfp4::BLOCK == 0, "MXFP4 tensor {blocks}: {cols} inputs do not split into blocks of {}", mxfp4::BLOCK);
        expect(&blocks, &[e, rows, cols / mxfp4::BLOCK, mxfp4::BLOCK / 2])?;
        expect(&scales, &[e, rows, cols / mxfp4::BLOCK])?;
        let (_, block_bytes) = tensors.get_bytes_slice(&blocks, part.expert)?;
        let (_, scale_bytes) = tensors.get_bytes_slice(&scales, part.expert)?;
        mxfp4::dequantize(block_bytes, scale_bytes, rows, cols).with_context(|| format!("tensor {blocks}"))?
    } else {
        bail!("neither {fused} (bf16) nor {blocks} with {scales} (MXFP4) is in the safetensors shards");
    };
    if down {
        return Ok((vec![h, f], linear));
    }
    let values = linear.chunks(h).skip(half).step_by(2).flatten().copied().collect();
    Ok((vec![f, h], values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_per_expert_weights_are_read_from_the_fused_tensors() {
        let p = parse("model.layers.3.mlp.experts.17.up_proj.bias").unwrap();
        assert_eq!((p.layer, p.expert, p.projection, p.bias), ("3", 17, "up_proj", true));
        for other in
            ["model.layers.3.mlp.router.weight", "model.layers.3.mlp.experts.x.up_proj.weight", "model.layers.3.mlp.experts.1.w1.weight"]
        {
            assert!(parse(other).is_none(), "{other}");
        }
    }
}
