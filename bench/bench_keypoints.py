"""Keypoint matching (matching/similarity/keypoints.py) per query against catalogs of growing size, up to the
Kaggle 2019 catalog (15,697 images), with generated SIFT-like descriptors (non-negative, unit length, 300 per image).

Times the descriptor stage (chunked matrix products and the ratio test) per query, which grows with the
catalog's keypoint count; the homography fits come on top and depend on how many catalog images pass
``min_matches`` (on the demo catalog: about 60 ms per query for 442 images). The last column extrapolates the
descriptor stage to the 7,960 Kaggle test queries.

    .venv/bin/python bench/bench_keypoints.py
    .venv/bin/python bench/bench_keypoints.py --sizes 442 4000 --queries 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matching.similarity.keypoints import KeypointSettings, ratio_matches  # noqa: E402


def descriptors(n: int, rng: np.random.Generator) -> torch.Tensor:
    d = rng.random((n, 128), dtype=np.float32) ** 3  # sparse-ish and non-negative, as SIFT histograms are
    return torch.from_numpy(d / np.linalg.norm(d, axis=1, keepdims=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[442, 4000, 15697], help="catalog sizes (images)")
    p.add_argument("--keypoints", type=int, default=300, help="keypoints per image")
    p.add_argument("--queries", type=int, default=5, help="queries timed per size")
    p.add_argument("--chunk", type=int, default=KeypointSettings().chunk)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    s = KeypointSettings()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.keypoints} keypoints per image, "
          f"chunk {args.chunk}")
    print(f"{'catalog':>8}{'keypoints':>12}{'s/query':>10}{'7,960 queries':>16}")
    for size in args.sizes:
        gallery = descriptors(size * args.keypoints, rng)
        queries = [descriptors(args.keypoints, rng) for _ in range(args.queries)]
        ratio_matches(queries[0], gallery, s.ratio, args.chunk)  # warm-up
        start = time.perf_counter()
        for q in queries:
            ratio_matches(q, gallery, s.ratio, args.chunk)
        per = (time.perf_counter() - start) / len(queries)
        print(f"{size:>8}{len(gallery):>12,}{per:>10.3f}{per * 7960 / 3600:>14.2f} h")


if __name__ == "__main__":
    main()
