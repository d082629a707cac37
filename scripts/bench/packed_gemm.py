#!/usr/bin/env python3
"""Packed against plain fp32 matrix products on the CPU, through libtorch's own MKL.

  packed_gemm.py THREADS PACKED_FOR_ROWS

For the weight matrices of SmolLM2-135M ([out, in]: 1536x576, 576x1536, 576x576, 192x576,
49152x576) and of a 0.5B shape (896x896, 4864x896, 896x4864), packs each matrix once
with `cblas_sgemm_pack` (hinted for PACKED_FOR_ROWS rows, as `sspo_model::packed` does)
and prints, per matrix, time(torch.nn.functional.linear) / time(cblas_sgemm_compute)
for inputs of 1 to 1,024 rows: above 1 the packed product is faster. Each product's
result is checked against `linear`.
"""
import ctypes
import os
import sys
import time

import torch

ROWS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024]
SHAPES = [(1536, 576), (576, 1536), (576, 576), (192, 576), (49152, 576),
          (896, 896), (4864, 896), (896, 4864)]
# mkl_cblas.h
ROW_MAJOR, NO_TRANS, TRANS, PACKED, B_MATRIX = 101, 111, 112, 151, 162


def timed(f, budget=0.15):
    f()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget:
        f()
        n += 1
    return (time.perf_counter() - start) / n


def main():
    threads, packed_for = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(threads)
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"),
                      mode=ctypes.RTLD_GLOBAL)
    get_size = lib.cblas_sgemm_pack_get_size
    get_size.restype = ctypes.c_size_t
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())
    print(f"threads {threads}, packed for {packed_for} rows; linear/packed time per row count {ROWS}")
    for n, k in SHAPES:
        w = torch.randn(n, k)
        buf = torch.empty(get_size(B_MATRIX, packed_for, n, k), dtype=torch.uint8)
        lib.cblas_sgemm_pack(ROW_MAJOR, B_MATRIX, TRANS, packed_for, n, k, ctypes.c_float(1.0),
                             ptr(w), k, ptr(buf))
        ratios = []
        for m in ROWS:
            x, out = torch.randn(m, k), torch.empty(m, n)

            def packed():
                lib.cblas_sgemm_compute(ROW_MAJOR, NO_TRANS, PACKED, m, n, k, ptr(x), k, ptr(buf),
                                        k, ctypes.c_float(0.0), ptr(out), n)

            plain = timed(lambda: torch.nn.functional.linear(x, w))
            ratios.append(plain / timed(packed))
            assert torch.allclose(out, torch.nn.functional.linear(x, w), atol=1e-3, rtol=1e-4)
        print(f"{n}x{k}: " + " ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
