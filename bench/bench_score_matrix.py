"""Test x catalog score matrix at the real Kaggle scale (7,960 x 15,697 pairs, D = 1024), on this CPU.

Times the compiled fused kernel, the eager loop over hidden units, and the straightforward version
that materialises [pairs, D, 32] (``score_matrix_naive``) on subsets of query rows against the whole
catalog, in one run; measures the machine's float32 matmul ceiling in the same run; converts to
GFLOP/s with the head's FLOPs per pair; extrapolates the full matrix; and measures peak memory of a
scoring run in a child process (VmHWM after resetting it, minus the RSS before scoring).

    .venv/bin/python bench/bench_score_matrix.py           # ~3 min on 2 cores (plus the first compile)
    .venv/bin/python bench/bench_score_matrix.py --quick   # smaller subsets, ~1 min
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matching.similarity.pair_head import HeadParams, score_matrix, score_matrix_naive  # noqa: E402

HIDDEN = 32


def head_flops_per_feature(hidden: int = HIDDEN) -> int:
    """FLOPs of the head per (pair, feature), a multiply-add counted as 2: 12 H + 8 (392 for H = 32).

    Inputs x*y, x+y, x-y, |x-y|, (x-y)^2: 5; Linear(4, H): 4H multiply-adds + H bias adds = 9H;
    ReLU: H; Linear(H, 1): 2H + 1; combine (one multiply-add per feature): 2.
    """
    return 5 + 9 * hidden + hidden + 2 * hidden + 1 + 2


def random_head(dim: int, seed: int) -> HeadParams:
    g = torch.Generator().manual_seed(seed)
    return HeadParams(
        w1=torch.randn(HIDDEN, 4, generator=g) * 0.5,
        b1=torch.randn(HIDDEN, generator=g) * 0.1,
        w2=torch.randn(HIDDEN, generator=g) * 0.2,
        b2=-0.1,
        wc=torch.randn(dim, generator=g) * (2.0 / dim**0.5),
        bc=0.0,
    )


def make_features(n: int, dim: int, seed: int) -> np.ndarray:
    """Non-negative features like a ReLU + global max pooling branch's."""
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal((n, dim), dtype=np.float32) + 0.5, 0.0)


def matmul_gflops(n: int, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def timed(fn, *args, **kwargs) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_child(args: argparse.Namespace) -> None:
    """Score ``rows`` x gallery once after a warm-up; print the peak RSS growth of the scoring as JSON."""
    head = random_head(args.dim, args.seed)
    gallery = make_features(args.gallery, args.dim, args.seed + 1)
    query = make_features(args.rows, args.dim, args.seed + 2)
    score_matrix(head, query[:2], gallery[:64], compile=True, budget_mb=args.budget_mb)  # compile outside
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = status_kb("VmRSS")
    score_matrix(head, query, gallery, compile=True, budget_mb=args.budget_mb)
    print(json.dumps({"before_kb": before, "peak_kb": status_kb("VmHWM")}))


def measure_memory(args: argparse.Namespace, rows: int, budget_mb: float) -> tuple[float, float]:
    """(peak growth MB, budget + output MB) of scoring ``rows`` x gallery in a fresh process."""
    cmd = [sys.executable, __file__, "--memory-child", "--rows", str(rows), "--gallery", str(args.gallery),
           "--dim", str(args.dim), "--budget-mb", str(budget_mb), "--seed", str(args.seed)]
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    growth = (res["peak_kb"] - res["before_kb"]) / 1024
    return growth, budget_mb + rows * args.gallery * 4 / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small subsets (about a minute)")
    ap.add_argument("--queries", type=int, default=7960, help="queries of the full matrix (extrapolation)")
    ap.add_argument("--gallery", type=int, default=15697, help="catalog images")
    ap.add_argument("--dim", type=int, default=1024, help="feature dimension D")
    ap.add_argument("--rows", type=int, default=None, help="query rows timed with the fast kernel")
    ap.add_argument("--budget-mb", type=float, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args)
        return

    fast_rows = args.rows or (16 if args.quick else 128)
    loop_rows, naive_rows = (1, 1) if args.quick else (2, 2)
    naive_cols = 2048 if args.quick else args.gallery
    head = random_head(args.dim, args.seed)
    gallery = make_features(args.gallery, args.dim, args.seed + 1)
    query = make_features(fast_rows, args.dim, args.seed + 2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")

    ceiling = matmul_gflops(1024 if args.quick else 2048)
    _, compile_s = timed(score_matrix, head, query[:2], gallery[:64], compile=True)
    fast, fast_s = timed(score_matrix, head, query, gallery, compile=True, budget_mb=args.budget_mb)
    loop, loop_s = timed(score_matrix, head, query[:loop_rows], gallery, compile=False)
    naive, naive_s = timed(score_matrix_naive, head, query[:naive_rows], gallery[:naive_cols],
                           budget_mb=args.budget_mb)
    diff = max(np.abs(fast[:naive_rows, :naive_cols] - naive).max(), np.abs(fast[:loop_rows] - loop).max())

    flops_pair = head_flops_per_feature() * args.dim
    full_pairs = args.queries * args.gallery
    runs = [
        ("compiled fused (torch.compile)", fast_rows * args.gallery, fast_s),
        ("eager loop over hidden units", loop_rows * args.gallery, loop_s),
        ("naive [pairs, D, 32] (baseline)", naive_rows * naive_cols, naive_s),
    ]
    naive_rate = runs[2][1] / naive_s
    print(f"\nScore matrix {args.queries} x {args.gallery} = {full_pairs / 1e6:.0f}M pairs, D = {args.dim}, "
          f"H = {HIDDEN}; head FLOPs per pair = {head_flops_per_feature()} x D = {flops_pair:,}")
    print(f"float32 matmul ceiling (measured now): {ceiling:.1f} GFLOP/s; first compile (or cache load): "
          f"{compile_s:.1f} s; max |difference| between paths: {diff:.2e}\n")
    print("| path | pairs timed | pairs/s | GFLOP/s | ceiling / GFLOP/s | x naive | full matrix (extrapolated) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, pairs, secs in runs:
        rate = pairs / secs
        gflops = rate * flops_pair / 1e9
        hours = full_pairs / rate / 3600
        print(f"| {name} | {pairs:,} | {rate:,.0f} | {gflops:.1f} | {ceiling / gflops:.1f} | "
              f"{rate / naive_rate:.1f} | {hours:.2f} h |")

    mem_rows = 32 if args.quick else 128
    print(f"\nPeak memory of scoring {mem_rows} x {args.gallery} (compiled path, child process):")
    print("| budget MB | output MB | peak growth MB | within budget + output |")
    print("|---:|---:|---:|---|")
    for budget in (16.0, 64.0, args.budget_mb):
        growth, limit = measure_memory(args, mem_rows, budget)
        print(f"| {budget:.0f} | {limit - budget:.1f} | {growth:.1f} | {'yes' if growth <= limit else 'NO'} |")


if __name__ == "__main__":
    main()
