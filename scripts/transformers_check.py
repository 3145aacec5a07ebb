#!/usr/bin/env python3
"""lumen against Hugging Face transformers, one tiny random-weight model per architecture.

For each architecture below, transformers builds a small model from its own config class, every
parameter is drawn at random (norm weights near 1, the rest normal with std 0.1, biases, attention
sinks, router biases and DeepSeek's routing correction bias included, so no block hides behind a
zero), and the model is saved as safetensors with its config.json. Then, for one prompt of PROMPT token ids:

- transformers (float32, eager attention, no cache: the whole sequence each step) gives the greedy
  chain of STEPS tokens and the log-softmax of every step's logits;
- `lumen generate --model DIR --device D --prompt-ids ... --max-tokens STEPS --ignore-eos
  --logprobs 5` gives lumen's chain and, per step, the log-probabilities of its five likeliest
  tokens.

A device passes when lumen's chain is transformers' and its log-probabilities are close:
- the CPU (float32): the same chain, and each of lumen's five log-probabilities per step within
  CPU_BOUND of transformers' for the same token;
- CUDA (bf16 weights and activations, whose rounding grows with a logit's size): the yardstick
  is transformers' own model cast to bf16, fed the float32 chain, whose distance from float32 is
  what bf16 alone costs this architecture. The greedy token's log-probability must lie within
  max(CUDA_TOP1_BOUND, BF16_FACTOR × that cost), each of the five within max(CUDA_RELATIVE_BOUND,
  BF16_FACTOR × its relative cost) × (1 + |transformers' log-probability|), and the chain must be
  transformers', except that it may part at a near tie (transformers' two likeliest tokens within
  max(NEAR_TIE, 2 × BF16_FACTOR × the greedy cost)), after which the steps are not compared.
  Every step's errors, lumen's and bf16 transformers', are in the log.
Architectures the CUDA backend refuses (it says so by name) are reported as refused, not as
failures.

Usage (on the GPU machine, which has torch and transformers 5.x; after scripts/gpu_tests.sh build):
  python3 scripts/transformers_check.py [--lumen gpu-tests/lumen] [--devices cpu,cuda] [--out DIR]
Exit status 1 when any device disagrees with transformers.
"""

import argparse
import copy
import json
import os
import subprocess
import sys

import torch
import transformers

PROMPT = 40
STEPS = 16
CPU_BOUND = 2e-3
CUDA_TOP1_BOUND = 0.1
CUDA_RELATIVE_BOUND = 0.03
NEAR_TIE = 0.2
BF16_FACTOR = 2.0
SEED = 1234


def common(**kw):
    """The shape every tiny model shares: two layers, head_dim 64 (the CUDA kernels take 32, 64 or
    128), grouped queries, a vocabulary of 512, untied head."""
    base = dict(
        vocab_size=512,
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        intermediate_size=256,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    base.update(kw)
    return base


def deepseek(mscale, **kw):
    """The tiny DeepSeek shape both versions share: MLA (64-wide latent, 32-wide rotary, no-rotary
    and value heads), 16 routed experts of which 4 per token, one dense layer first, and YaRN on
    the rotary part with DeepSeek's `mscale` (the same for `mscale_all_dim`); `kw` adds each
    version's own keys."""
    base = common(num_key_value_heads=4, moe_intermediate_size=64, n_routed_experts=16, num_experts_per_tok=4,
                  first_k_dense_replace=1, kv_lora_rank=64, qk_rope_head_dim=32, qk_nope_head_dim=32, v_head_dim=32,
                  rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "mscale": mscale,
                                   "mscale_all_dim": mscale, "original_max_position_embeddings": 128,
                                   "beta_fast": 32.0, "beta_slow": 1.0},
                  **kw)
    base.pop("head_dim")
    return base


def deepseek_v3():
    """DeepSeek-V3 with every feature on: a q LoRA, grouped sigmoid routing (4 groups, 2 kept)
    with its correction bias and scaling, renormalised weights, and one shared expert."""
    return deepseek(1.0, q_lora_rank=64, n_group=4, topk_group=2, n_shared_experts=1, routed_scaling_factor=2.5,
                    norm_topk_prob=True)


def deepseek_v2():
    """DeepSeek-V2-Lite's kind: no q LoRA, softmax top-k routing without renormalisation, two
    shared experts, and YaRN's mscale of 0.707."""
    return deepseek(0.707, q_lora_rank=None, topk_method="greedy", norm_topk_prob=False, n_shared_experts=2,
                    routed_scaling_factor=1.0)


def architectures():
    t = transformers
    return {
        "llama": lambda: t.LlamaConfig(**common()),
        "qwen2": lambda: t.Qwen2Config(**common()),
        "qwen3": lambda: t.Qwen3Config(**common()),
        "mixtral": lambda: t.MixtralConfig(**common(num_local_experts=8, num_experts_per_tok=2)),
        "qwen2_moe": lambda: t.Qwen2MoeConfig(
            **common(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=128, shared_expert_intermediate_size=256,
                     norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[])
        ),
        "qwen3_moe": lambda: t.Qwen3MoeConfig(
            **common(num_experts=16, num_experts_per_tok=4, moe_intermediate_size=128, norm_topk_prob=True,
                     decoder_sparse_step=1, mlp_only_layers=[])
        ),
        "olmoe": lambda: t.OlmoeConfig(**common(num_experts=16, num_experts_per_tok=4, intermediate_size=128)),
        "deepseek_v2": lambda: t.DeepseekV2Config(**deepseek_v2()),
        "deepseek_v3": lambda: t.DeepseekV3Config(**deepseek_v3()),
        "gpt_oss": lambda: t.GptOssConfig(
            **common(num_local_experts=8, num_experts_per_tok=2, intermediate_size=256, sliding_window=16,
                     layer_types=["sliding_attention", "full_attention"], rope_theta=150000.0)
        ),
    }


def build(name, make, directory):
    """Builds, randomizes and saves one tiny model; returns it in float32 for the reference."""
    config = make()
    config._attn_implementation = "eager"
    torch.manual_seed(SEED)
    model = getattr(transformers, type(config).__name__.replace("Config", "ForCausalLM"))(config).float().eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
        # DeepSeek's routing correction bias is a buffer, not a parameter.
        for bname, b in model.named_buffers():
            if "correction_bias" in bname:
                b.copy_(0.1 * torch.randn_like(b))
    model.save_pretrained(directory, safe_serialization=True)
    return model


@torch.no_grad()
def reference(model, prompt):
    ids = list(prompt)
    steps = []
    for _ in range(STEPS):
        logits = model(torch.tensor([ids])).logits[0, -1].double()
        logprobs = torch.log_softmax(logits, dim=-1)
        token = int(torch.argmax(logprobs))
        steps.append(logprobs)
        ids.append(token)
    return ids[len(prompt):], steps


@torch.no_grad()
def bf16_cost(model, prompt, chain, steps, log):
    """(worst greedy |dlogprob|, worst top-5 relative) of transformers in bf16 against float32,
    teacher-forced on the float32 chain; each step's pair goes to the log."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    half = copy.deepcopy(model).to(device=device, dtype=torch.bfloat16)
    ids = torch.tensor([list(prompt) + list(chain)], device=device)
    logits = half(ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(chain)].double().cpu()
    worst_top1 = worst_rel = 0.0
    for i, (ref, got) in enumerate(zip(steps, torch.log_softmax(logits, dim=-1))):
        top1 = abs(float(ref[chain[i]] - got[chain[i]]))
        top5 = torch.topk(ref, 5).indices
        rel = max(abs(float(ref[j] - got[j])) / (1 + abs(float(ref[j]))) for j in top5)
        log.write(f"  bf16 transformers step {i}: greedy |dlogprob| {top1:.3e}, top-5 relative {rel:.3e}\n")
        worst_top1, worst_rel = max(worst_top1, top1), max(worst_rel, rel)
    return worst_top1, worst_rel


def run_lumen(lumen, directory, device, prompt, log):
    cmd = [lumen, "generate", "--model", directory, "--device", device, "--prompt-ids", ",".join(map(str, prompt)),
           "--max-tokens", str(STEPS), "--ignore-eos", "--logprobs", "5"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    log.write(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        return None, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")], None


def compare(chain, steps, tokens, device, cost, log):
    """(passed, description) for lumen's `tokens` against transformers' `chain` and `steps`;
    `cost` is bf16 transformers' (greedy, relative) distance from float32."""
    got = [t["id"] for t in tokens]
    worst_abs = worst_top1 = worst_rel = 0.0
    parted = None
    for i, (step, t) in enumerate(zip(steps, tokens)):
        if t["id"] != chain[i]:
            top2 = torch.topk(step, 2).values
            parted = (i, float(top2[0] - top2[1]))
            break
        top1 = abs(float(step[t["id"]]) - t["logprob"])
        rel = max(abs(float(step[token]) - logprob) / (1 + abs(float(step[token]))) for token, logprob in t["top"])
        log.write(f"  lumen {device} step {i}: greedy |dlogprob| {top1:.3e}, top-5 relative {rel:.3e}\n")
        worst_top1, worst_rel = max(worst_top1, top1), max(worst_rel, rel)
        worst_abs = max([worst_abs] + [abs(float(step[token]) - logprob) for token, logprob in t["top"]])
    if device == "cpu":
        ok = got == chain and worst_abs <= CPU_BOUND
        detail = f"worst |dlogprob| {worst_abs:.2e} (bound {CPU_BOUND:.0e})"
    else:
        top1_bound = max(CUDA_TOP1_BOUND, BF16_FACTOR * cost[0])
        rel_bound = max(CUDA_RELATIVE_BOUND, BF16_FACTOR * cost[1])
        tie = max(NEAR_TIE, 2 * BF16_FACTOR * cost[0])
        ok = worst_top1 <= top1_bound and worst_rel <= rel_bound and (parted is None or parted[1] < tie)
        detail = (f"greedy |dlogprob| {worst_top1:.2e} (bound {top1_bound:.3f}), top-5 relative {worst_rel:.2e} "
                  f"(bound {rel_bound:.3f}); bf16 transformers {cost[0]:.2e} / {cost[1]:.2e}")
    if parted is None:
        chain_text = f"chain equal ({len(tokens)} tokens)"
    else:
        chain_text = f"chain parts at step {parted[0]} (transformers' top two {parted[1]:.3f} apart)"
    return ok, f"{chain_text}, {detail}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lumen", default="gpu-tests/lumen")
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/transformers-check"))
    parser.add_argument("--only", default="", help="comma-separated architectures (default: all)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    generator = torch.Generator().manual_seed(SEED)
    prompt = torch.randint(3, 512, (PROMPT,), generator=generator).tolist()
    rows, failed = [], False
    with open(os.path.join(args.out, "transformers_check.log"), "w") as log:
        log.write(f"transformers {transformers.__version__}, torch {torch.__version__}\n")
        for name, make in architectures().items():
            if args.only and name not in args.only.split(","):
                continue
            directory = os.path.join(args.out, f"tiny-{name}")
            model = build(name, make, directory)
            chain, steps = reference(model, prompt)
            log.write(f"== {name}\n")
            cost = bf16_cost(model, prompt, chain, steps, log)
            for device in args.devices.split(","):
                tokens, refused = run_lumen(args.lumen, directory, device, prompt, log)
                if tokens is None:
                    rows.append((name, device, "refused" if "CUDA backend" in refused else "ERROR", refused[:90]))
                    failed |= "CUDA backend" not in refused
                    continue
                ok, detail = compare(chain, steps, tokens, device, cost, log)
                failed |= not ok
                rows.append((name, device, "ok" if ok else "FAILED", detail))
    print(f"transformers {transformers.__version__}; prompt {PROMPT} ids, {STEPS} greedy steps")
    for name, device, verdict, detail in rows:
        print(f"{name:10} {device:5} {verdict:8} {detail}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
