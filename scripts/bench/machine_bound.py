#!/usr/bin/env python3
"""The machine's bound for the model benchmarks: matmul GFLOP/s and memory bandwidth,
through the same libtorch (MKL on x86) the engine links.

  machine_bound.py [THREADS]   (default 2)

Prints one JSON line per measurement:
  * `matmul`: [m, k] x [k, n] in fp32 and bf16, a large square product (the peak MKL
    reaches) and SmolLM2-135M's decode shapes at 16 and 64 rows (what a decode step runs);
  * `copy`: a 512 MB tensor copied (read + write bytes per second, the bandwidth bound of
    reading weights).
"""
import json
import sys
import time

import torch


def timed(f, min_s=1.0):
    f()
    n, start = 0, time.perf_counter()
    while True:
        f()
        n += 1
        took = time.perf_counter() - start
        if took >= min_s:
            return took / n


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(threads)
    shapes = [("square", 2048, 2048, 2048)]
    # SmolLM2-135M: hidden 576, intermediate 1536, vocab 49152.
    for rows in (1, 16, 64):
        shapes += [
            (f"smollm2_mlp_up_{rows}", rows, 576, 1536),
            (f"smollm2_mlp_down_{rows}", rows, 1536, 576),
            (f"smollm2_lm_head_{rows}", rows, 576, 49152),
        ]
    for dtype in (torch.float32, torch.bfloat16):
        for name, m, k, n in shapes:
            a = torch.randn(m, k, dtype=dtype)
            w = torch.randn(n, k, dtype=dtype)
            s = timed(lambda: torch.nn.functional.linear(a, w))
            print(json.dumps({
                "what": "matmul", "shape": name, "m": m, "k": k, "n": n,
                "dtype": str(dtype).removeprefix("torch."), "threads": threads,
                "gflop_s": round(2 * m * k * n / s / 1e9, 1),
                "weight_gb_s": round(n * k * a.element_size() / s / 1e9, 1),
            }))
    src = torch.empty(128 * 1024 * 1024, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    s = timed(lambda: dst.copy_(src))
    print(json.dumps({
        "what": "copy", "mb": src.numel() * 4 // 2**20, "threads": threads,
        "gb_s": round(2 * src.numel() * 4 / s / 1e9, 1),
    }))


if __name__ == "__main__":
    main()
