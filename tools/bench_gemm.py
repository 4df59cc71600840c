#!/usr/bin/env python3
"""CPU GEMM: kiln beside PyTorch at the same shapes and thread count.

Setup: pip install torch;  cargo build --release
Run:   python3 tools/bench_gemm.py [--threads 2] [--seconds 1]
Prints a table (GFLOP/s, kiln as % of PyTorch) and writes nothing; copy the table into
bench/RESULTS.md with the date and machine.
"""
import argparse
import json
import os
import subprocess
import time

SHAPES = ["2048x2048x2048", "512x576x576", "512x576x1536", "512x1536x576", "512x576x49152"]


def torch_gflops(shape, seconds):
    import torch
    m, k, n = map(int, shape.split("x"))
    x, w = torch.randn(m, k), torch.randn(n, k)
    torch.nn.functional.linear(x, w)
    times, start = [], time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < seconds and len(times) < 1000):
        t = time.perf_counter()
        torch.nn.functional.linear(x, w)
        times.append(time.perf_counter() - t)
    times.sort()
    return 2 * m * k * n / times[len(times) // 2] / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--kiln", default="target/release/kiln")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    cmd = [a.kiln, "bench", "gemm", "--json", "--seconds", str(a.seconds)] + sum((["--shape", s] for s in SHAPES), [])
    kiln = {r["shape"]: r["gflops"] for r in json.loads(subprocess.check_output(cmd, env=env))}
    print(f"threads={a.threads} torch={torch.__version__} blas={torch.backends.mkl.is_available() and 'mkl' or 'other'}")
    print(f"| shape (MxKxN, x·Wᵀ) | kiln GFLOP/s | PyTorch GFLOP/s | kiln / PyTorch |")
    print(f"|---|---|---|---|")
    for s in SHAPES:
        t = torch_gflops(s, a.seconds)
        print(f"| {s} | {kiln[s]:.1f} | {t:.1f} | {100 * kiln[s] / t:.0f} % |")


if __name__ == "__main__":
    main()
