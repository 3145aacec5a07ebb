#!/usr/bin/env python3
"""The transformers peer (peers/hf_generate.py, copied there from the shared peers) on lumen's
DeepSeek presets, which it has no shapes for: this adds their configs, the same sizes as
crates/model/src/presets.rs, and runs the peer with the same arguments.

  python3 scripts/peer_shapes.py --model moonlight-16b-a3b --batch 1 64
  python3 scripts/peer_shapes.py --model deepseek-v3 --layers 5 --batch 1 64

Needs torch and transformers 5.x (the GPU machine); the peer itself times generate().
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "peers"))
import hf_generate  # noqa: E402


def yarn(factor, original, mscale):
    return {"rope_type": "yarn", "rope_theta": 10000.0, "factor": factor, "mscale": mscale, "mscale_all_dim": mscale,
            "original_max_position_embeddings": original, "beta_fast": 32.0, "beta_slow": 1.0}


def deepseek(**kw):
    """MLA of 512-wide latents with 64 rotary and 128 no-rotary and value values per head, untied."""
    base = dict(model_type="deepseek_v3", kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128,
                tie_word_embeddings=False)
    base.update(kw)
    return base


SHAPES = {
    "deepseek-v3": deepseek(vocab_size=129280, hidden_size=7168, num_hidden_layers=61, num_attention_heads=128,
                            num_key_value_heads=128, intermediate_size=18432, rms_norm_eps=1e-6,
                            max_position_embeddings=163840, q_lora_rank=1536, n_routed_experts=256,
                            num_experts_per_tok=8, moe_intermediate_size=2048, n_shared_experts=1,
                            first_k_dense_replace=3, n_group=8, topk_group=4, routed_scaling_factor=2.5,
                            norm_topk_prob=True, rope_parameters=yarn(40.0, 4096, 1.0)),
    "moonlight-16b-a3b": deepseek(vocab_size=163840, hidden_size=2048, num_hidden_layers=27, num_attention_heads=16,
                                  num_key_value_heads=16, intermediate_size=11264, rms_norm_eps=1e-5,
                                  max_position_embeddings=8192, q_lora_rank=None, n_routed_experts=64,
                                  num_experts_per_tok=6, moe_intermediate_size=1408, n_shared_experts=2,
                                  first_k_dense_replace=1, n_group=1, topk_group=1, routed_scaling_factor=2.446,
                                  norm_topk_prob=True,
                                  rope_parameters={"rope_type": "default", "rope_theta": 50000.0}),
    "deepseek-v2-lite": dict(model_type="deepseek_v2", vocab_size=102400, hidden_size=2048, num_hidden_layers=27,
                             num_attention_heads=16, num_key_value_heads=16, intermediate_size=10944,
                             rms_norm_eps=1e-6, max_position_embeddings=163840, q_lora_rank=None, kv_lora_rank=512,
                             qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, n_routed_experts=64,
                             num_experts_per_tok=6, moe_intermediate_size=1408, n_shared_experts=2,
                             first_k_dense_replace=1, topk_method="greedy", norm_topk_prob=False,
                             routed_scaling_factor=1.0, tie_word_embeddings=False,
                             rope_parameters=yarn(40.0, 4096, 0.707)),
}

if __name__ == "__main__":
    hf_generate.CONFIGS.update(SHAPES)
    hf_generate.main()
