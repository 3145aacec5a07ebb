"""Small real GPU programs, each with one known performance pathology (variant `bad`) and the same
work with the pathology removed (variant `good`), to check that `lumen analyze` finds each
pathology and raises nothing else. scripts/gpu_programs.sh runs every program and variant under
`lumen profile` and under torch.profiler and analyses both traces.

  gpu_programs.py PROGRAM --variant bad|good [--steps N] [--torch-trace OUT.json]

A run sets its tensors up, runs a few warm-up steps outside any recorded step (graph programs
instead run their ops eagerly before capturing them, so the first replay is in the first recorded
step), then STEPS steps (default 40), with torch.cuda.synchronize() only at the very end unless
synchronising is the pathology. Every step is an NVTX range `ProfilerStep#N` with its parts
(`forward`, `copy`, `alloc`, `synchronize`, `host work`) as NVTX ranges inside, and the steps lie
between cudaProfilerStart and cudaProfilerStop, the capture window of `lumen profile -c
cudaProfilerApi`. With --torch-trace the same steps run under torch.profiler (CPU and CUDA,
record_shapes, with_flops, schedule wait=1 warmup=1 active=STEPS-2) and its Kineto trace is
written to OUT.json: torch.profiler's own ProfilerStep#N ranges are the steps, the parts are
record_function ranges of the same names, and no NVTX range is emitted. No program copies from
or to pageable host memory except `pageable --variant bad` (`.item()` and a plain `.to("cuda")`
copy through pageable memory too, so neither is used). Each run prints its wall time.

The programs, and the verdict expected from `lumen analyze` (pattern names as it prints them):

  launch      bad:  120 tiny in-place elementwise ops on a 4 KiB tensor per step, launched
                    eagerly: the GPU idles between launches.   -> kernel-launch overhead
              good: the same ops captured once in a CUDA graph, replayed each step.
                                                              -> no kernel-launch overhead
  host        bad:  5 bf16 4096x4096 matmuls (~1 ms of GPU work), torch.cuda.synchronize(), then
                    ~4 ms of pure-Python computation before the next step's launches: the GPU
                    idles during host work after the sync returned, not in the sync.
                                                              -> CPU bottleneck (host-bound), phase
                                                                 `host work`; not synchronisation gaps
              good: the same matmuls with neither the synchronize nor the host work.
                                                              -> no CPU bottleneck
  sync        bad:  100 bf16 2048x2048 matmuls (~20-40 us each) per step, each followed by
                    torch.cuda.synchronize(): the GPU drains after every kernel.
                                                              -> synchronisation gaps
              good: the same matmuls with one synchronize at the end of the step.
                                                              -> no synchronisation gaps
  pageable    bad:  a 64 MiB pageable CPU tensor copied with .to("cuda", non_blocking=True) each
                    step, then a kernel on it.                 -> pageable memcpy
              good: the same from a pinned tensor (pin_memory()).
                                                              -> no pageable memcpy
  alloc       bad:  torch.cuda.empty_cache() and four fresh 64 MiB tensors per step (cudaFree and
                    cudaMalloc each step), filled and summed.  -> allocation churn (the idle time
                                                                 it causes may also show as host
                                                                 waits in phase `alloc`)
              good: the same four tensors allocated once before the loop and reused.
                                                              -> no allocation churn
  memory      bad:  torch.add(a, b, out=c) on 1 GiB bf16 tensors, 4 times a step: DRAM at full
                    speed.                                    -> memory-bandwidth bound
              good: the GEMM loop of `compute --variant bad`. -> compute bound, not memory bound
  compute     bad:  4 bf16 8192x8192x8192 GEMMs a step, captured in a CUDA graph and replayed
                    each step; the first replay is in step 0 (a one-off stall: an outlier step,
                    not a pattern).                           -> compute bound
              good: the streaming add of `memory --variant bad`.
                                                              -> memory-bandwidth bound, not
                                                                 compute bound
  smallbatch  bad:  a decode-like MLP stack at batch 1: 4 blocks of bf16 linear 8192->32768,
                    SiLU, linear 32768->8192 (4 GiB of weights): each GEMM reads its whole
                    weight for one row.                       -> small batch: memory-bound GEMMs
                                                                 with idle tensor cores
              good: the same stack at batch 1024.             -> tensor-bound GEMMs (compute
                                                                 bound), not small batch

  fp32        bad:  FP32 4096x4096 matmuls (TF32 off): the work runs on the FP32 pipes while the
                    tensor pipes idle.                        -> compute bound against the FP32
                                                                 peak (from the operators' shapes;
                                                                 PM sampling has no FP32-pipe
                                                                 counter on H200, so the collector
                                                                 trace reads latency bound)
              good: the same matmuls in bf16.                 -> compute bound (tensor pipes)

The bound patterns of `memory`, `compute` and `smallbatch` read GPU metric samples (`lumen
profile --gpu-metrics`); imported torch.profiler traces have none, and there they read the
operators' recorded shapes instead, which the graph-replayed GEMMs of `compute` lack (not
available there). Every run stays well under 3 s of GPU time and 5,000 kernels.
"""
import argparse
import sys
import time
from contextlib import contextmanager

import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule

DEV = torch.device("cuda")
BF16 = torch.bfloat16
MIB = 1 << 20
GIB = 1 << 30
WARMUP_STEPS = 3

LAUNCH_OPS = 120  # tiny kernels per step (60 mul_/add_ pairs)
LAUNCH_ELEMENTS = 1024  # 4 KiB of float32
HOST_MATMULS, HOST_N = 5, 4096  # ~1 ms of GPU work
HOST_WORK_S = 0.004  # pure-Python work per step
SYNC_MATMULS, SYNC_N = 100, 2048
PAGEABLE_BYTES = 64 * MIB
ALLOC_TENSORS, ALLOC_BYTES = 4, 64 * MIB
STREAM_BYTES, STREAM_ADDS = GIB, 4
GEMM_N, GEMM_COUNT = 8192, 4
MLP_HIDDEN, MLP_BLOCKS, MLP_BATCH_BAD, MLP_BATCH_GOOD = 8192, 4, 1, 1024
FP32_N, FP32_MATMULS = 4096, 4


def capture(fn):
    """A CUDA graph of `fn`: fn runs eagerly on a side stream first, as torch.cuda.graph asks,
    then once under capture. The graph is not replayed here."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    # thread_local: the collector's flush thread may call CUPTI while this thread captures.
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        fn()
    torch.cuda.synchronize()
    return graph


def host_work(seconds):
    """Pure-Python computation (no sleep, no CUDA call) for about `seconds`."""
    end = time.perf_counter() + seconds
    acc = 0
    while time.perf_counter() < end:
        for i in range(500):
            acc = (acc * 31 + i) % 1_000_003
    return acc


# Each program takes the variant, sets its tensors up and returns (step, warm-up steps); step(part)
# runs one step, naming its parts with `with part(name):`.


def launch(variant):
    x = torch.ones(LAUNCH_ELEMENTS, device=DEV)

    def ops():
        for _ in range(LAUNCH_OPS // 2):
            x.mul_(0.999).add_(0.001)

    run = ops if variant == "bad" else capture(ops).replay

    def step(part):
        with part("forward"):
            run()

    return step, WARMUP_STEPS if variant == "bad" else 0


def host(variant):
    a = torch.randn(HOST_N, HOST_N, device=DEV, dtype=BF16)
    b = torch.randn(HOST_N, HOST_N, device=DEV, dtype=BF16)
    c = torch.empty(HOST_N, HOST_N, device=DEV, dtype=BF16)

    def step(part):
        with part("forward"):
            for _ in range(HOST_MATMULS):
                torch.matmul(a, b, out=c)
        if variant == "bad":
            with part("synchronize"):
                torch.cuda.synchronize()
            with part("host work"):
                host_work(HOST_WORK_S)

    return step, WARMUP_STEPS


def sync(variant):
    a = torch.randn(SYNC_N, SYNC_N, device=DEV, dtype=BF16)
    b = torch.randn(SYNC_N, SYNC_N, device=DEV, dtype=BF16)
    c = torch.empty(SYNC_N, SYNC_N, device=DEV, dtype=BF16)

    def step(part):
        with part("forward"):
            for _ in range(SYNC_MATMULS):
                torch.matmul(a, b, out=c)
                if variant == "bad":
                    torch.cuda.synchronize()
        if variant == "good":
            with part("synchronize"):
                torch.cuda.synchronize()

    return step, WARMUP_STEPS


def pageable(variant):
    src = torch.rand(PAGEABLE_BYTES // 4)  # float32, pageable host memory
    if variant == "good":
        src = src.pin_memory()
    out = torch.empty(PAGEABLE_BYTES // 4, device=DEV)

    def step(part):
        with part("copy"):
            dev = src.to(DEV, non_blocking=True)
        with part("forward"):
            torch.mul(dev, 2.0, out=out)

    return step, WARMUP_STEPS


def alloc(variant):
    n = ALLOC_BYTES // 2  # bf16 elements
    kept = [torch.empty(n, device=DEV, dtype=BF16) for _ in range(ALLOC_TENSORS)] if variant == "good" else None

    def step(part):
        if variant == "bad":
            with part("alloc"):
                torch.cuda.empty_cache()
                bufs = [torch.empty(n, device=DEV, dtype=BF16) for _ in range(ALLOC_TENSORS)]
        else:
            bufs = kept
        with part("forward"):
            for i, t in enumerate(bufs):
                t.fill_(i + 1)
            for t in bufs[1:]:
                bufs[0].add_(t)

    return step, WARMUP_STEPS


def stream_add():
    """Streaming elementwise add over 1 GiB bf16 tensors: DRAM-bound."""
    n = STREAM_BYTES // 2
    a = torch.rand(n, device=DEV, dtype=BF16)
    b = torch.rand(n, device=DEV, dtype=BF16)
    c = torch.empty(n, device=DEV, dtype=BF16)

    def step(part):
        with part("forward"):
            for _ in range(STREAM_ADDS):
                torch.add(a, b, out=c)

    return step, WARMUP_STEPS


def gemm_graph():
    """Large bf16 GEMMs captured in one CUDA graph; its first replay is in the first step."""
    a = torch.randn(GEMM_N, GEMM_N, device=DEV, dtype=BF16)
    b = torch.randn(GEMM_N, GEMM_N, device=DEV, dtype=BF16)
    c = torch.empty(GEMM_N, GEMM_N, device=DEV, dtype=BF16)

    def gemms():
        for _ in range(GEMM_COUNT):
            torch.matmul(a, b, out=c)

    graph = capture(gemms)

    def step(part):
        with part("forward"):
            graph.replay()

    return step, 0


def memory(variant):
    return stream_add() if variant == "bad" else gemm_graph()


def compute(variant):
    return gemm_graph() if variant == "bad" else stream_add()


def smallbatch(variant):
    h, blocks = MLP_HIDDEN, MLP_BLOCKS
    batch = MLP_BATCH_BAD if variant == "bad" else MLP_BATCH_GOOD
    # nn.Linear layout [out, in]; one allocation per stack of weights, filled in place.
    up = torch.empty(blocks, 4 * h, h, device=DEV, dtype=BF16).normal_(0.0, 0.01)
    down = torch.empty(blocks, h, 4 * h, device=DEV, dtype=BF16).normal_(0.0, 0.01)
    x0 = torch.randn(batch, h, device=DEV, dtype=BF16)

    def step(part):
        with part("forward"):
            x = x0
            for i in range(blocks):
                x = torch.nn.functional.linear(torch.nn.functional.silu(torch.nn.functional.linear(x, up[i])), down[i])

    return step, WARMUP_STEPS


def fp32(variant):
    torch.backends.cuda.matmul.allow_tf32 = False
    dtype = torch.float32 if variant == "bad" else BF16
    a = torch.randn(FP32_N, FP32_N, device=DEV, dtype=dtype)
    b = torch.randn(FP32_N, FP32_N, device=DEV, dtype=dtype)
    c = torch.empty(FP32_N, FP32_N, device=DEV, dtype=dtype)

    def step(part):
        with part("forward"):
            for _ in range(FP32_MATMULS):
                torch.mm(a, b, out=c)

    return step, WARMUP_STEPS


PROGRAMS = {
    "launch": launch,
    "host": host,
    "sync": sync,
    "pageable": pageable,
    "alloc": alloc,
    "memory": memory,
    "compute": compute,
    "smallbatch": smallbatch,
    "fp32": fp32,
}


def cuda_profiler(on):
    """cudaProfilerStart/Stop, the capture window of `lumen profile -c cudaProfilerApi` (no-ops
    without a profiler); the driver's cuProfilerStart/Stop if torch's binding fails."""
    try:
        torch.cuda.profiler.start() if on else torch.cuda.profiler.stop()
    except Exception as e:
        import ctypes

        call = "cuProfilerStart" if on else "cuProfilerStop"
        rc = getattr(ctypes.CDLL("libcuda.so.1"), call)()
        print(f"[gpu_programs] torch.cuda.profiler failed ({e}); {call} returned {rc}", file=sys.stderr)


@contextmanager
def no_part(name):
    yield


@contextmanager
def nvtx_part(name):
    torch.cuda.nvtx.range_push(name)
    try:
        yield
    finally:
        torch.cuda.nvtx.range_pop()


@contextmanager
def torch_part(name):
    with record_function(name):
        yield


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("program", choices=list(PROGRAMS))
    p.add_argument("--variant", required=True, choices=["bad", "good"])
    p.add_argument("--steps", type=int, default=40, help="recorded steps (at least 4; default 40)")
    p.add_argument("--torch-trace", metavar="OUT.json", help="run under torch.profiler and write its Kineto trace here")
    args = p.parse_args()
    if args.steps < 4:
        p.error("--steps must be at least 4")
    if not torch.cuda.is_available():
        sys.exit("gpu_programs.py: no CUDA device")

    torch.manual_seed(0)
    step, warmup = PROGRAMS[args.program](args.variant)
    for _ in range(warmup):
        step(no_part)
    torch.cuda.synchronize()

    started = time.perf_counter()
    if args.torch_trace:
        activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
        window = schedule(wait=1, warmup=1, active=args.steps - 2, repeat=1)
        with profile(activities=activities, schedule=window, record_shapes=True, with_flops=True) as prof:
            for _ in range(args.steps):
                step(torch_part)
                prof.step()
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        prof.export_chrome_trace(args.torch_trace)
    else:
        cuda_profiler(True)
        for n in range(args.steps):
            torch.cuda.nvtx.range_push(f"ProfilerStep#{n}")
            step(nvtx_part)
            torch.cuda.nvtx.range_pop()
        torch.cuda.synchronize()
        cuda_profiler(False)
        elapsed = time.perf_counter() - started
    print(
        f"[gpu_programs] {args.program} {args.variant}: {args.steps} steps in {elapsed * 1e3:.1f} ms "
        f"({elapsed * 1e3 / args.steps:.2f} ms/step){' under torch.profiler' if args.torch_trace else ''}; "
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    )


if __name__ == "__main__":
    main()
