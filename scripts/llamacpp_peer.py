#!/usr/bin/env python3
"""The CPU peer for `lumen bench`: llama.cpp, through the PyPI package llama-cpp-python, serving a
lumen dataset (JSON lines of input_ids and output_tokens) one request at a time with greedy
decoding and EOS suppressed, so each request yields exactly output_tokens, as `--eos-id -1` does.

Prints one JSON line: requests, output tokens, wall seconds, output tokens per second, and the mean
per-request decode rate.

Usage: python3 scripts/llamacpp_peer.py MODEL.gguf DATASET.jsonl [--threads N] [--num-requests N]
Install: pip install llama-cpp-python numpy   (builds llama.cpp from source)
"""
import argparse
import json
import time

import numpy as np
from llama_cpp import Llama


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("dataset")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-requests", type=int, default=0)
    args = parser.parse_args()

    with open(args.dataset) as f:
        requests = [json.loads(line) for line in f if line.strip()]
    if args.num_requests:
        requests = requests[: args.num_requests]
    llm = Llama(model_path=args.model, n_threads=args.threads, n_threads_batch=args.threads, n_ctx=4096, verbose=False)
    eos = llm.token_eos()

    def suppress_eos(_ids, logits):
        logits[eos] = -np.inf
        return logits

    produced, rates = 0, []
    started = time.perf_counter()
    for r in requests:
        llm.reset()
        t = time.perf_counter()
        out = llm.create_completion(prompt=r["input_ids"], max_tokens=r["output_tokens"], temperature=0.0,
                                    logits_processor=[suppress_eos])
        n = out["usage"]["completion_tokens"]
        produced += n
        rates.append(n / (time.perf_counter() - t))
    wall = time.perf_counter() - started
    print(json.dumps({"peer": "llama.cpp", "requests": len(requests), "output_tokens": produced, "wall_s": round(wall, 2),
                      "output_tok_s": round(produced / wall, 1), "per_request_tok_s_mean": round(sum(rates) / len(rates), 1),
                      "threads": args.threads}))


if __name__ == "__main__":
    main()
