"""Bursts for checking `lumen profile --gpu-metrics` against ncu (docs/benchmarks.md): three 0.5 s
bursts of a streaming add (1 GiB in, 1 GiB out), then three of 8192x8192 bf16 GEMMs, each
followed by a 0.5 s pause. Run: lumen profile -o bursts --gpu-metrics 1000 -- python3 scripts/gpu_metrics_bursts.py
"""
import time, torch
x = torch.empty(1 << 28, dtype=torch.float32, device="cuda"); y = torch.empty_like(x)
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
for work in [lambda: torch.add(x, 1.0, out=y), lambda: a @ b]:
    for _ in range(3):
        t = time.time()
        while time.time() - t < 0.5:
            work()
        torch.cuda.synchronize(); time.sleep(0.5)
