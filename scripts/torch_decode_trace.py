"""A small decode-like PyTorch loop under torch.profiler, written as Kineto (Chrome JSON) trace:
the input for `lumen trace import` tests (crates/cli/tests/data/torch_h100.json).

  torch_decode_trace.py OUT.json

Each step is one "iteration" (ProfilerStep#N): a pageable host-to-device copy of the step's
token ids, an embedding, four blocks of norm, matmuls, SiLU and a residual add inside
record_function("forward"), then logits, argmax and a synchronising .item() inside
record_function("sample"). The schedule skips one step, warms up one and records four.
"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule

HIDDEN, VOCAB, BATCH, LAYERS = 1024, 8192, 16, 4


def main(out):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    embed = torch.randn(VOCAB, HIDDEN, device=dev, dtype=torch.bfloat16)
    blocks = [(torch.randn(4 * HIDDEN, HIDDEN, device=dev, dtype=torch.bfloat16) * 0.02,
               torch.randn(HIDDEN, 4 * HIDDEN, device=dev, dtype=torch.bfloat16) * 0.02) for _ in range(LAYERS)]
    tokens = list(range(BATCH))

    def step():
        ids = torch.tensor(tokens, dtype=torch.long).to(dev, non_blocking=True)
        with record_function("forward"):
            x = embed[ids]
            for up, down in blocks:
                h = torch.nn.functional.rms_norm(x, (HIDDEN,))
                x = x + torch.nn.functional.silu(h @ up.t()) @ down.t()
        with record_function("sample"):
            logits = x.float() @ embed.float().t()
            nxt = logits.argmax(dim=-1)
            first = nxt[0].item()
        tokens[:] = [(t + first + 1) % VOCAB for t in tokens]

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], schedule=schedule(wait=1, warmup=1, active=4)) as prof:
        for _ in range(6):
            step()
            prof.step()
    prof.export_chrome_trace(out)


if __name__ == "__main__":
    main(sys.argv[1])
