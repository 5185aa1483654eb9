"""The machine's limits: a GEMM microbenchmark (peak compute) and a memory-bandwidth probe.

Prefill and the encoder are compute-bound, so they are compared with the GEMM peak (FLOP/s they reach
divided by the peak). Decoding one token reads every weight once, so its ceiling is bandwidth divided by
the decoder's weight bytes; decode tokens/s is compared with that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Limits:
    gemm_gflops_f32: float  # numpy (BLAS) float32 matrix multiply, n x n
    gemm_n: int
    bandwidth_gb_s: float  # sustained read of a large array (sum), GB/s
    bandwidth_mb: int


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    seconds = _best(lambda: a @ b, repeats)
    return 2 * n**3 / seconds / 1e9


def read_bandwidth_gb_s(mb: int = 1024, repeats: int = 5, threads: int = 1) -> float:
    """Bytes per second of summing a float32 array far larger than any cache, one slice per thread
    (numpy releases the GIL in reductions), as the decoder reads its weights with all its threads."""
    from concurrent.futures import ThreadPoolExecutor

    x = np.ones(mb * 1024 * 1024 // 4, dtype=np.float32)
    parts = np.array_split(x, threads)
    with ThreadPoolExecutor(threads) as pool:
        seconds = _best(lambda: list(pool.map(np.add.reduce, parts)), repeats)
    return x.nbytes / seconds / 1e9


def measure(threads: int, quick: bool = False) -> Limits:
    n, mb = (1024, 256) if quick else (2048, 1024)
    return Limits(gemm_gflops(n), n, read_bandwidth_gb_s(mb, threads=threads), mb)


def decode_ceiling_tok_s(weight_bytes: int, limits: Limits) -> float:
    """Tokens/s if every decode step only had to read the weights once at the measured bandwidth."""
    return limits.bandwidth_gb_s * 1e9 / weight_bytes
