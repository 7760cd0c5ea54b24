"""Learned local matching (matching/similarity/local_match.py) per query against catalogs of growing size, up
to the Kaggle 2019 catalog (15,697 photos): brute force (mutual NN over every pair) against a shortlist of
B catalog photos from another member (mutual NN or LightGlue on those pairs only). Generated unit
descriptors, 256 keypoints of 128 dimensions per photo (ALIKED-n16's shape); the shortlist step itself
(a top-B of the other member's matrix row) is timed too. The last column projects to the 7,960 Kaggle queries.

    .venv/bin/python bench/bench_local.py
    .venv/bin/python bench/bench_local.py --sizes 442 4000 --queries 2 --top 100 --glue-pairs 20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matching.similarity.local_features import LocalSet  # noqa: E402
from matching.similarity.local_match import lightglue_counts, load_matcher, mnn_matrix, mnn_pairs, shortlist  # noqa: E402

KAGGLE_QUERIES = 7960


def local_set(n: int, k: int, rng: np.random.Generator) -> LocalSet:
    d = rng.standard_normal((n, k, 128), dtype=np.float32)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    points = rng.uniform(0, 224, (n, k, 2)).astype(np.float32)
    return LocalSet(np.asarray([f"p{i}" for i in range(n)]), points, d, np.ones((n, k), bool),
                    np.full((n, 2), 224, np.float32))


def timed(fn, *args, repeats: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn(*args)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[442, 4000, 15697], help="catalog sizes (photos)")
    p.add_argument("--keypoints", type=int, default=256)
    p.add_argument("--queries", type=int, default=2, help="queries timed per size")
    p.add_argument("--top", type=int, default=100, help="shortlist size B")
    p.add_argument("--glue-pairs", type=int, default=20, help="LightGlue pairs timed (its cost is per pair)")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.keypoints} keypoints x 128 per photo; "
          f"shortlist B = {args.top}")
    queries = local_set(args.queries, args.keypoints, rng)
    matcher = load_matcher("aliked-n16")
    pairs = np.stack([np.zeros(args.glue_pairs, int), np.arange(args.glue_pairs) % args.queries], 1)
    glue = timed(lightglue_counts, matcher, queries, queries, pairs) / args.glue_pairs
    print(f"LightGlue: {glue:.3f} s per pair, so {glue * args.top:.1f} s per query on a shortlist of {args.top}")
    print(f"{'catalog':>8}{'brute MNN s/q':>15}{'shortlist s/q':>15}{'MNN on B s/q':>14}{'Kaggle h (brute)':>18}"
          f"{'Kaggle h (MNN on B)':>21}")
    for size in args.sizes:
        gallery = local_set(size, args.keypoints, rng)
        brute = timed(mnn_matrix, queries, gallery) / args.queries
        other = rng.random((args.queries, size), dtype=np.float32)  # another member's matrix rows
        pick = timed(shortlist, other, args.top, repeats=3) / args.queries
        cols = shortlist(other, args.top)
        listed = np.stack([np.repeat(np.arange(args.queries), cols.shape[1]), cols.ravel()], 1)
        on_b = timed(mnn_pairs, queries, gallery, listed) / args.queries
        print(f"{size:>8}{brute:>15.3f}{pick:>15.4f}{on_b:>14.3f}{brute * KAGGLE_QUERIES / 3600:>18.2f}"
              f"{(pick + on_b) * KAGGLE_QUERIES / 3600:>21.2f}")


if __name__ == "__main__":
    main()
