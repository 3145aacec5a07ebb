"""The collector against torch.profiler, on the same fixed PyTorch workload (docs/gpu.md).

  collector_vs_torch.py run                 the workload; its measured part lies between
                                            cudaProfilerStart and cudaProfilerStop, for
                                            `lumen profile -c cudaProfilerApi`
  collector_vs_torch.py torch OUT.json      the workload with torch.profiler around the same part,
                                            written as its Chrome/Kineto JSON
  collector_vs_torch.py compare OUT.json TRACE.lumen
                                            kernel counts per name must match exactly and total
                                            kernel time must agree within 2%; prints a table and
                                            exits non-zero otherwise

The workload is a fixed sequence of ops: bf16 and f32 matmuls, softmax, layer norm, GELU,
elementwise arithmetic, reductions, a fill, and host/device copies, repeated STEPS times after
a warm-up, so the same kernels run in both processes.
"""
import json
import sqlite3
import sys
from collections import Counter

STEPS = 40


def workload_step(torch, x, w, a, host):
    y = x @ w
    y = torch.nn.functional.gelu(y)
    y = torch.nn.functional.layer_norm(y, (y.shape[-1],))
    s = torch.softmax(y.float(), dim=-1)
    z = a @ a.t()
    z = z * 0.5 + 1.0
    total = s.sum() + z.mean()
    host.copy_(y[:64].float(), non_blocking=False)
    y[:64].copy_(host.to(torch.bfloat16, copy=False).to(y.device))
    buf = torch.empty(1 << 20, dtype=torch.uint8, device=x.device)
    buf.zero_()
    return total


def run(profile_torch=None):
    import torch

    torch.manual_seed(0)
    dev = torch.device("cuda")
    x = torch.randn(2048, 4096, device=dev, dtype=torch.bfloat16)
    w = torch.randn(4096, 4096, device=dev, dtype=torch.bfloat16)
    a = torch.randn(1024, 1024, device=dev, dtype=torch.float32)
    host = torch.empty(64, 4096, dtype=torch.float32).pin_memory()
    for _ in range(5):
        workload_step(torch, x, w, a, host)
    torch.cuda.synchronize()

    if profile_torch is None:
        torch.cuda.profiler.start()
        for _ in range(STEPS):
            workload_step(torch, x, w, a, host)
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    else:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(STEPS):
                workload_step(torch, x, w, a, host)
            torch.cuda.synchronize()
        prof.export_chrome_trace(profile_torch)


def torch_kernels(path):
    events = json.load(open(path))["traceEvents"]
    kernels = [e for e in events if e.get("cat") == "kernel"]
    counts = Counter(e["name"] for e in kernels)
    total_ns = sum(float(e["dur"]) * 1000.0 for e in kernels)
    return counts, total_ns


def lumen_kernels(path):
    db = sqlite3.connect(path)
    rows = db.execute("SELECT name, end - start FROM gpu_op_names WHERE kind = 'kernel'").fetchall()
    counts = Counter(name for name, _ in rows)
    total_ns = float(sum(d for _, d in rows))
    return counts, total_ns


def compare(torch_json, lumen_trace):
    t_counts, t_total = torch_kernels(torch_json)
    l_counts, l_total = lumen_kernels(lumen_trace)
    names = sorted(set(t_counts) | set(l_counts), key=lambda n: -max(t_counts[n], l_counts[n]))
    mismatched = [n for n in names if t_counts[n] != l_counts[n]]
    print(f"{'torch.profiler':>14} {'lumen':>8}  kernel")
    for n in names:
        mark = "" if t_counts[n] == l_counts[n] else "   <-- differs"
        print(f"{t_counts[n]:>14} {l_counts[n]:>8}  {n[:110]}{mark}")
    diff = abs(l_total - t_total) / t_total if t_total else float("inf")
    print(f"kernels: torch.profiler {sum(t_counts.values())}, lumen {sum(l_counts.values())}; "
          f"distinct names {len(t_counts)} / {len(l_counts)}; mismatched names {len(mismatched)}")
    print(f"total kernel time: torch.profiler {t_total / 1e6:.3f} ms, lumen {l_total / 1e6:.3f} ms, "
          f"difference {100 * diff:.2f}% (bound 2%)")
    ok = not mismatched and diff <= 0.02 and l_counts
    print("RESULT", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def main(argv):
    if len(argv) >= 1 and argv[0] == "run":
        run()
        return 0
    if len(argv) == 2 and argv[0] == "torch":
        run(profile_torch=argv[1])
        return 0
    if len(argv) == 3 and argv[0] == "compare":
        return compare(argv[1], argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
