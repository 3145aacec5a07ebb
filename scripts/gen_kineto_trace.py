#!/usr/bin/env python3
"""Writes a synthetic torch.profiler (Kineto) Chrome trace of a decode loop, for benchmarking and
testing `lumen trace import` and `lumen analyze` without a GPU.

Usage: gen_kineto_trace.py N OUT.json [--step K] [--rich] [--seed S]

Every kernel has a cudaLaunchKernel call on the host thread with the same correlation id, an
ac2g flow from the call to the kernel, and runs on stream 7 of device 0 once the GPU is free and
the launch has returned. A ProfilerStep#i annotation opens every K kernels (200 by default) and
lasts until the next one. GEMM-like kernels run 2-62 us, the others 2-8 us; a launch takes 4-5 us
and the host pauses 30 us at the end of each step, so the GPU both queues work and waits for it.

--rich adds what real traces carry besides kernels: process and thread names, an aten::linear
cpu_op around each launch, per step an HtoD copy from pageable memory and a memset (with their
runtime calls), a [memory] instant event, a gpu_user_annotation copy of each step, profiler
bookkeeping events (Trace, overhead) and the base time after the events. Times are written with
three decimals (nanoseconds), as Kineto writes them. N=1000000 without --rich is about 680 MB.
"""
import argparse
import json
import random

KERNELS = [
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", 60.0),
    ("flash_fwd_splitkv_kernel", 6.0),
    ("rms_norm_kernel", 6.0),
    ("silu_and_mul_kernel", 6.0),
    ("rotary_embedding_kernel", 6.0),
    ("reshape_and_cache_flash_kernel", 6.0),
    ("argmax_kernel", 6.0),
]
HOST_PID, HOST_TID, DEVICE, STREAM = 4321, 4321, 0, 7


class Writer:
    """Writes the traceEvents array one event at a time."""

    def __init__(self, out, rich):
        self.out = out
        self.first = True
        self.rich = rich
        self.sep = (",", ":") if rich else (", ", ": ")

    def event(self, ev):
        self.out.write("" if self.first else ",")
        self.out.write("\n" if self.rich else " ")
        self.out.write(json.dumps(ev, separators=self.sep))
        self.first = False


def t3(x):
    return round(x, 3)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kernels", type=int)
    p.add_argument("out")
    p.add_argument("--step", type=int, default=200, help="kernels per ProfilerStep")
    p.add_argument("--rich", action="store_true", help="add the other event kinds of real traces")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    rng = random.Random(a.seed)
    header = {
        "schemaVersion": 1,
        "deviceProperties": [{"id": DEVICE, "name": "NVIDIA H100 80GB HBM3", "totalGlobalMem": 85029158912,
                              "computeMajor": 9, "computeMinor": 0, "numSms": 132}],
        "distributedInfo": {"backend": "nccl", "rank": 0, "world_size": 1},
    }
    host = {"pid": HOST_PID, "tid": HOST_TID}
    gpu = {"pid": DEVICE, "tid": STREAM}
    with open(a.out, "w") as out:
        out.write(json.dumps(header)[:-1] + ', "traceEvents": [')
        w = Writer(out, a.rich)
        if a.rich:
            w.event({"ph": "M", "name": "process_name", **host, "ts": 0, "args": {"name": "python3 decode.py"}})
            w.event({"ph": "M", "name": "thread_name", **host, "ts": 0, "args": {"name": "thread 4321 (python3)"}})
            w.event({"ph": "M", "name": "process_name", "pid": DEVICE, "tid": 0, "ts": 0, "args": {"name": "GPU 0"}})
            w.event({"ph": "M", "name": "thread_name", **gpu, "ts": 0, "args": {"name": "stream 7 "}})
        cpu, gpu_free = 5000.0, 5010.0
        correlation = 0

        def launch(name, at, args=None):
            nonlocal correlation
            correlation += 1
            dur = t3(4.0 + rng.random())
            w.event({"ph": "X", "cat": "cuda_runtime", "name": name, **host, "ts": t3(at), "dur": dur,
                     "args": {"External id": correlation, "cbid": 211, "correlation": correlation, **(args or {})}})
            return correlation, at + dur

        def gpu_op(cat, name, ready, dur, corr, args):
            nonlocal gpu_free
            start = t3(max(gpu_free, ready + 1.0))
            dur = t3(dur)
            w.event({"ph": "X", "cat": cat, "name": name, **gpu, "ts": start, "dur": dur,
                     "args": {"External id": corr, "device": DEVICE, "context": 1, "stream": STREAM,
                              "correlation": corr, **args}})
            gpu_free = start + dur
            return start

        for first in range(0, a.kernels, a.step):
            step, step_start, gpu_step_start = first // a.step, t3(cpu), None
            if a.rich:
                size = 4096 * (1 + step % 4)
                corr, ready = launch("cudaMemcpyAsync", cpu)
                gpu_step_start = gpu_op("gpu_memcpy", "Memcpy HtoD (Pageable -> Device)", ready, 1.5, corr,
                                        {"bytes": size, "memory bandwidth (GB/s)": 2.7})
                cpu = ready + 1.0
                corr, ready = launch("cudaMemsetAsync", cpu)
                gpu_op("gpu_memset", "Memset (Device)", ready, 1.0, corr, {"bytes": 256})
                w.event({"ph": "i", "cat": "cpu_instant_event", "s": "t", "name": "[memory]", **host, "ts": t3(ready),
                         "args": {"Total Reserved": 2097152, "Total Allocated": 1048576 + size, "Bytes": size}})
                cpu = ready + 1.0
            for i in range(first, min(first + a.step, a.kernels)):
                name, spread = KERNELS[i % len(KERNELS)]
                op_start = cpu
                if a.rich:
                    cpu += 1.0
                corr, ready = launch("cudaLaunchKernel", cpu)
                start = gpu_op("kernel", name, ready, 2.0 + spread * rng.random(), corr,
                               {"queued": 0, "registers per thread": 32 if spread < 10 else 168,
                                "shared memory": 0 if spread < 10 else 73728,
                                "grid": [132, 1, 1], "block": [128, 1, 1]})
                if gpu_step_start is None:
                    gpu_step_start = start
                w.event({"ph": "s", "id": corr, **host, "ts": t3(cpu), "cat": "ac2g", "name": "ac2g"})
                w.event({"ph": "f", "id": corr, **gpu, "ts": start, "cat": "ac2g", "name": "ac2g", "bp": "e"})
                cpu = ready + 1.5
                if a.rich:
                    w.event({"ph": "X", "cat": "cpu_op", "name": "aten::linear", **host, "ts": t3(op_start),
                             "dur": t3(cpu - op_start), "args": {"External id": corr, "Sequence number": i}})
                    cpu += 0.5
            cpu += 30.0
            w.event({"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{step}", **host, "ts": step_start,
                     "dur": t3(cpu - step_start), "args": {"External id": 0}})
            if a.rich:
                w.event({"ph": "X", "cat": "gpu_user_annotation", "name": f"ProfilerStep#{step}", **gpu,
                         "ts": gpu_step_start, "dur": t3(gpu_free - gpu_step_start), "args": {"External id": 0}})
        if a.rich:
            w.event({"ph": "X", "cat": "Trace", "name": "PyTorch Profiler (0)", "pid": "Spans", "tid": "PyTorch Profiler",
                     "ts": 4990.0, "dur": t3(max(cpu, gpu_free) - 4990.0), "args": {"Op count": 0}})
            w.event({"ph": "X", "cat": "overhead", "name": "Activity Buffer Request", "pid": DEVICE, "tid": 0,
                     "ts": 4995.0, "dur": 3.25})
        out.write('\n], "traceName": "decode.pt.trace.json", "displayTimeUnit": "ms", "baseTimeNanoseconds": 1764300000000000000}\n')
    print(f"{correlation} launches, {a.kernels} kernels in {a.out}")


if __name__ == "__main__":
    main()
