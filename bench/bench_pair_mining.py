"""One epoch of negative mining at the real Kaggle scale: the fast paths against dense lap.lapjv.

Training set: whales with 2+ images sampled from the real 2019 label file until ~10.7k images (the
size of one fold's mining set). Scores: probabilities from random embeddings with a whale structure
(images of a whale scatter around its centre). Every solver of a row sees the same noise, so the
"hardness" column is the chosen negatives' objective (mean of score + K * noise) over the dense optimum.
Times: wall clock and this process's CPU seconds (the machine may be shared).

    .venv/bin/python bench/bench_pair_mining.py            # full table (dense runs take ~30 s each)
    .venv/bin/python bench/bench_pair_mining.py --n 3000   # quicker
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from siamese.pairs import NegativeMiner, pair_noise  # noqa: E402

LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "kaggle_labels" / "humpback2019_train.csv"


def sample_labels(path: Path, n: int, rng: np.random.Generator) -> np.ndarray:
    """Whale ids (ints) of whales with 2+ images, drawn in random order until about ``n`` images."""
    ids = pd.read_csv(path)["Id"]
    counts = ids[ids != "new_whale"].value_counts()
    counts = counts[counts >= 2].to_numpy()
    counts = counts[rng.permutation(len(counts))]
    take = int(np.searchsorted(np.cumsum(counts), n)) + 1
    return np.repeat(np.arange(take), counts[:take])


def make_scores(labels: np.ndarray, dim: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    """float32 ``[N, N]`` "probabilities": a logistic of the cosine similarity of noisy whale embeddings."""
    centres = rng.standard_normal((labels.max() + 1, dim))
    emb = centres[labels] + spread * rng.standard_normal((len(labels), dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    scores = (emb @ emb.T).astype(np.float32)
    scores -= 0.5
    scores *= 10.0
    np.negative(scores, out=scores)
    np.exp(scores, out=scores)
    scores += 1.0
    np.reciprocal(scores, out=scores)
    return scores


def objective(scores: np.ndarray, pairs: np.ndarray, K: float, seed: int) -> tuple[float, float]:
    """(mean score, mean score + K * noise) of the chosen pairs."""
    s = scores[pairs[:, 0], pairs[:, 1]].astype(np.float64)
    return float(s.mean()), float((s + K * pair_noise(seed, pairs[:, 0], pairs[:, 1])).mean())


def run(miner: NegativeMiner, scores: np.ndarray | None, K: float, seed: int) -> tuple[np.ndarray, dict, int]:
    """The miner's pairs, its wall-clock and CPU seconds, and the noise seed it used."""
    rng = np.random.default_rng(seed)
    noise_seed = int(np.random.default_rng(seed).integers(0, 2**63))  # the miner's first draw
    wall, cpu = time.perf_counter(), time.process_time()
    pairs = miner.mine(scores, K, rng)
    times = {"wall s": time.perf_counter() - wall, "cpu s": time.process_time() - cpu}
    return pairs, times, noise_seed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", type=Path, default=LABELS, help="Kaggle train.csv with the whale-size distribution")
    p.add_argument("--n", type=int, default=10_700, help="training images (default: one fold, 10,700)")
    p.add_argument("--dim", type=int, default=32, help="embedding size of the generated scores")
    p.add_argument("--spread", type=float, default=0.8, help="scatter of a whale's images around its centre")
    p.add_argument("--K", type=float, nargs="+", default=[0.0, 0.25, 1.0], help="noise amplitudes")
    p.add_argument("--sparse-k", type=int, nargs="+", default=[16, 32], help="candidates per row (sparse)")
    p.add_argument("--segments", type=int, default=4, help="chunks for the segmented rows")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if not args.labels.is_file():
        print(f"{args.labels}: not found (needs ../shared/data)", file=sys.stderr)
        return 2

    rng = np.random.default_rng(args.seed)
    labels = sample_labels(args.labels, args.n, rng)
    scores = make_scores(labels, args.dim, args.spread, rng)
    n = len(labels)
    print(f"N = {n} images of {labels.max() + 1} whales (largest {np.bincount(labels).max()}); "
          f"scores {scores.nbytes / 2**20:.0f} MiB float32")

    rows = []
    pairs, times, _ = run(NegativeMiner(labels), None, 1000.0, args.seed)
    rows.append({"K": "-", "solver": "random negatives (scores=None)", **times, "pairs": len(pairs)})
    for K in args.K:
        dense, times, noise_seed = run(NegativeMiner(labels), scores, K, args.seed)
        s_dense, o_dense = objective(scores, dense, K, noise_seed)
        rows.append({"K": K, "solver": "dense lapjv (whole matrix)", **times, "pairs": len(dense),
                     "mean score": s_dense, "hardness": 1.0})
        variants = [(f"sparse lapmod k={k}", {"sparse_k": k}) for k in args.sparse_k]
        variants += [(f"dense lapjv, {args.segments} segments", {"segments": args.segments}),
                     (f"sparse k={args.sparse_k[-1]}, {args.segments} segments",
                      {"segments": args.segments, "sparse_k": args.sparse_k[-1]})]
        for name, options in variants:
            miner = NegativeMiner(labels, **options)
            pairs, times, _ = run(miner, scores, K, args.seed)
            s, o = objective(scores, pairs, K, noise_seed)
            used = ",".join(sorted(set(miner.last_solvers)))
            rows.append({"K": K, "solver": f"{name} [{used}]", **times, "pairs": len(pairs),
                         "mean score": s, "hardness": o / o_dense})
    table = pd.DataFrame(rows)
    table["pairs"] = table["pairs"].astype("Int64")
    formats = {"wall s": "{:.2f}".format, "cpu s": "{:.2f}".format, "mean score": "{:.4f}".format,
               "hardness": "{:.5f}".format}
    print(table.to_string(index=False, formatters=formats, na_rep=""))
    print("hardness: the chosen pairs' mean of score + K * noise over the dense optimum's (same noise)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
