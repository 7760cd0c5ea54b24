"""Training pairs of one epoch: positives by derangement within each whale, negatives by linear assignment.

Negatives follow Piotte's kernel and the 5th place: every image gets one partner of another whale by
solving the assignment problem on minus (scores + K * uniform noise), so that large K gives random
negatives and small K the hardest ones the model still confuses.
"""

from __future__ import annotations

from dataclasses import dataclass

import lap
import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from tqdm.auto import tqdm

from data.catalog import NEW_WHALE

RANDOM_CANDIDATES = 32  # candidates per row for random negatives (scores=None)
_BLOCK_ENTRIES = 1 << 22  # matrix entries handled at once (rows per block = this // N)
_MIX1, _MIX2, _ODD = np.uint32(0x7FEB352D), np.uint32(0x846CA68B), np.uint32(0x9E3779B9)


def whale_ids(labels: np.ndarray, new_whale: str = NEW_WHALE) -> np.ndarray:
    """Integer ids of the labels; every ``new_whale`` image is a whale of its own."""
    labels = np.asarray(labels)
    ids = np.unique(labels, return_inverse=True)[1].astype(np.int64).ravel()
    if labels.dtype.kind in "USO":
        new = np.flatnonzero(labels.astype(str) == new_whale)
        ids[new] = len(labels) + np.arange(len(new))
    return ids


def positive_pairs(labels: np.ndarray, rng: np.random.Generator, new_whale: str = NEW_WHALE) -> np.ndarray:
    """``(P, 2)`` pairs ``(i, j)``: for each whale with 2+ images a uniformly random derangement of its
    images (no image with itself), every such image once as ``i``; ``new_whale`` gives none."""
    ids = whale_ids(labels, new_whale)
    order = np.argsort(ids, kind="stable")
    starts = np.flatnonzero(np.r_[True, ids[order][1:] != ids[order][:-1]]) if len(ids) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(ids)]
    out = []
    for s, e in zip(starts, ends):
        if e - s < 2:
            continue
        members = order[s:e]
        while True:
            perm = rng.permutation(e - s)
            if not np.any(perm == np.arange(e - s)):
                break
        out.append(np.stack([members, members[perm]], axis=1))
    pairs = np.concatenate(out) if out else np.zeros((0, 2), np.int64)
    return pairs[np.argsort(pairs[:, 0], kind="stable")].astype(np.int64)


def _mix32(x: np.ndarray) -> np.ndarray:
    """A 32-bit integer hash (xorshift-multiply), in place."""
    x ^= x >> np.uint32(16)
    x *= _MIX1
    x ^= x >> np.uint32(15)
    x *= _MIX2
    x ^= x >> np.uint32(16)
    return x


def _row_hash(seed: int, rows: np.ndarray) -> np.ndarray:
    return _mix32(np.atleast_1d(np.asarray(rows)).astype(np.uint32) ^ np.uint32(seed & 0xFFFFFFFF))


def _col_hash(seed: int, cols: np.ndarray) -> np.ndarray:
    cols = np.atleast_1d(np.asarray(cols)).astype(np.uint32)
    return _mix32(cols * _ODD ^ np.uint32((seed >> 32) & 0xFFFFFFFF))


def pair_noise(seed: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) noise, a pure function of ``(seed, row, col)`` (broadcast like ``rows + cols``).

    Every solver and every segment therefore sees the same noise for the same pair of images.
    """
    return _mix32(_row_hash(int(seed), rows) + _col_hash(int(seed), cols)) * 2.0**-32


def _in_sorted(table: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if table.size == 0:
        return np.zeros(keys.shape, bool)
    pos = np.minimum(np.searchsorted(table, keys), table.size - 1)
    return table[pos] == keys


def _top_k_per_row(r: np.ndarray, c: np.ndarray, v: np.ndarray, n_rows: int, k: int):
    """Keep the ``k`` largest ``v`` of each row of a row-sorted coordinate list."""
    counts = np.bincount(r, minlength=n_rows)
    width = int(counts.max(initial=0))
    if width <= k:
        return r, c, v
    pos = np.arange(len(r)) - (np.cumsum(counts) - counts)[r]
    padded = np.full((n_rows, width), -np.inf)
    padded[r, pos] = v
    chosen = np.zeros((n_rows, width), bool)
    np.put_along_axis(chosen, np.argpartition(padded, width - k, axis=1)[:, width - k:], True, axis=1)
    keep = chosen[r, pos]
    return r[keep], c[keep], v[keep]


@dataclass
class _Problem:
    """One assignment problem: images ``idx`` (local 0..n-1), their whales, scores and masks."""

    idx: np.ndarray
    whale: np.ndarray
    scores: np.ndarray | None
    K: float
    seed: int
    codes: np.ndarray  # sorted local codes r * n + c of remembered pairs

    def __post_init__(self) -> None:
        self.n = len(self.idx)
        self.row_hash = _row_hash(self.seed, self.idx)
        self.col_hash = _col_hash(self.seed, self.idx)
        self.hist_count = np.bincount(self.codes // self.n, minlength=self.n)

    def noise(self, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """:func:`pair_noise` of local pairs (the hashes of the images are computed once)."""
        return _mix32(self.row_hash[r] + self.col_hash[c]) * 2.0**-32

    def allowed(self, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        keep = self.whale[r] != self.whale[c]
        if self.codes.size:
            keep &= ~_in_sorted(self.codes, r * self.n + c)
        return keep


class NegativeMiner:
    """One negative partner per image and epoch by linear assignment (``lap``) on the noisy scores.

    Masked (never chosen while a valid assignment exists): pairs of the same whale, and pairs chosen
    in the remembered epochs, in either order. History rule: every epoch's pairs are remembered
    (the last ``memory`` epochs when ``memory`` is set) until :meth:`reset`; when the masks leave no
    valid assignment, the oldest remembered epochs are ignored, one at a time, until one exists.

    Solvers: dense ``lap.lapjv`` on the N x N matrix (default), or, with ``sparse_k``, ``lap.lapmod``
    on the ``sparse_k`` best candidates of each row by noisy score (found without scanning the noise of
    the whole matrix), falling back to dense when that sparse problem has no perfect assignment.
    ``segments > 1`` splits the images at random into that many chunks, each solved on its own.
    """

    def __init__(self, labels: np.ndarray, *, segments: int = 1, sparse_k: int | None = None,
                 memory: int | None = None, new_whale: str = NEW_WHALE):
        if segments < 1:
            raise ValueError(f"segments must be >= 1, not {segments}")
        if sparse_k is not None and sparse_k < 1:
            raise ValueError(f"sparse_k must be >= 1 or None, not {sparse_k}")
        self.whale = whale_ids(labels, new_whale)
        self.n = len(self.whale)
        self.segments = int(segments)
        self.sparse_k = None if sparse_k is None else int(sparse_k)
        self.memory = memory
        self.history: list[np.ndarray] = []
        self.last_segments: list[np.ndarray] = []  # the images of each segment of the last epoch
        self.last_solvers: list[str] = []  # the solver each of them used

    # ---- history -----------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every chosen pair (e.g. when a new score matrix replaces the old one)."""
        self.history.clear()

    def state_dict(self) -> dict:
        return {"history": [torch.from_numpy(h.copy()) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        history = [np.asarray(h, dtype=np.int64).reshape(-1, 2) for h in state["history"]]
        if any(h.size and (h.min() < 0 or h.max() >= self.n) for h in history):
            raise ValueError(f"miner history has image indices outside [0, {self.n})")
        self.history = history

    def _history_codes(self, idx: np.ndarray, depth: int) -> np.ndarray:
        """Sorted local codes ``a * n + b`` of remembered pairs (both orders) inside ``idx``."""
        if depth <= 0 or not self.history:
            return np.zeros(0, np.int64)
        local = np.full(self.n, -1, np.int64)
        local[idx] = np.arange(len(idx))
        pairs = local[np.concatenate(self.history[-depth:])]
        pairs = pairs[(pairs >= 0).all(axis=1)]
        n = len(idx)
        return np.unique(np.concatenate([pairs[:, 0] * n + pairs[:, 1], pairs[:, 1] * n + pairs[:, 0]]))

    # ---- mining ------------------------------------------------------------------------------
    def mine(self, scores: np.ndarray | None, K: float, rng: np.random.Generator) -> np.ndarray:
        """``(N, 2)`` pairs ``(i, j)`` of different whales, every image once as ``i`` and once as ``j``.

        ``scores`` ``[N, N]`` (higher: more alike) or None for random negatives. Fewer than N pairs
        only where no valid assignment exists at all (e.g. one whale holds most images of a segment).
        """
        if scores is not None:
            scores = np.asarray(scores)
            if scores.dtype.kind != "f":
                scores = scores.astype(np.float64)
            if scores.shape != (self.n, self.n):
                raise ValueError(f"scores must be [{self.n}, {self.n}], not {list(scores.shape)}")
            if not np.isfinite(scores).all():
                raise ValueError("scores must be finite")
        if not np.isfinite(K) or K < 0:
            raise ValueError(f"K must be finite and >= 0, not {K}")
        seed = int(rng.integers(0, 2**63))
        if self.segments == 1:
            groups = [np.arange(self.n)]
        else:
            groups = [np.sort(g) for g in np.array_split(rng.permutation(self.n), self.segments)]
        self.last_segments, self.last_solvers = groups, []
        steps = tqdm(groups, desc="assignment", unit="segment", leave=False, disable=len(groups) < 2 and self.n < 2000)
        parts = [self._assign(g, scores, float(K), seed, rng) for g in steps]
        pairs = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
        pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
        self.history.append(pairs)
        if self.memory is not None:
            self.history = self.history[-self.memory:] if self.memory > 0 else []
        return pairs

    def _assign(self, idx: np.ndarray, scores: np.ndarray | None, K: float, seed: int,
                rng: np.random.Generator) -> np.ndarray:
        """Global pairs for the images ``idx`` (one segment, or all)."""
        if len(idx) < 2:
            self.last_solvers.append("none")
            return np.zeros((0, 2), np.int64)
        sub = None
        if scores is not None:
            sub = scores if len(idx) == self.n else scores[np.ix_(idx, idx)]
        if sub is None:
            K = 1.0  # random negatives: pure noise
        problem = _Problem(idx, self.whale[idx], sub, K, seed, self._history_codes(idx, len(self.history)))
        local, solver = None, "dense"
        if sub is None or self.sparse_k is not None:
            local = self._sparse(problem, rng)
            solver = "random" if sub is None else "sparse"
        if local is None:
            local, solver = self._dense(problem), "dense"
        self.last_solvers.append(solver)
        return idx[local]

    # ---- dense -------------------------------------------------------------------------------
    def _dense(self, p: _Problem) -> np.ndarray:
        """lapjv on the full cost; masked entries cost more than any assignment of unmasked ones,
        so one is chosen only when no valid assignment exists: then older history is ignored."""
        depth = len(self.history)
        cost, big = self._dense_cost(p)
        while True:
            codes = self._history_codes(p.idx, depth)
            saved = cost.flat[codes]
            cost.flat[codes] = big
            x = lap.lapjv(cost, return_cost=False)[0]
            masked = cost[np.arange(p.n), x] >= big
            if not masked.any() or depth == 0:
                break
            cost.flat[codes] = saved
            depth -= 1
        rows = np.flatnonzero(~masked)  # every row unless no valid assignment exists at all
        return np.stack([rows, x[rows]], axis=1)

    @staticmethod
    def _dense_cost(p: _Problem) -> tuple[np.ndarray, float]:
        """Minus the noisy scores, same-whale pairs set to ``big``."""
        cost = np.empty((p.n, p.n))
        step = max(1, _BLOCK_ENTRIES // p.n)
        cols = np.arange(p.n)
        for r0 in range(0, p.n, step):
            rows = np.arange(r0, min(r0 + step, p.n))
            value = p.K * p.noise(rows[:, None], cols[None, :])
            if p.scores is not None:
                value += p.scores[r0:r0 + len(rows)]
            value[p.whale[rows][:, None] == p.whale[None, :]] = -np.inf
            np.negative(value, out=cost[r0:r0 + len(rows)])
        finite = np.isfinite(cost)
        lo, hi = (cost[finite].min(), cost[finite].max()) if finite.any() else (0.0, 0.0)
        big = hi + (p.n + 1) * (hi - lo + 1.0)
        cost[~finite] = big
        return cost, big

    # ---- sparse ------------------------------------------------------------------------------
    def _sparse(self, p: _Problem, rng: np.random.Generator) -> np.ndarray | None:
        """lapmod on the k best allowed candidates of each row; None when that problem is infeasible.

        Without scores the candidates are random (the top k of pure noise is a random k-subset).
        """
        k = min(self.sparse_k or RANDOM_CANDIDATES, p.n - 1)
        if p.scores is None:
            r, c = _random_candidates(p.n, k, rng)
            keep = p.allowed(r, c)
            r, c = r[keep], c[keep]
            v = p.noise(r, c)
        else:
            r, c, v = _score_candidates(p, k, rng)
        order = np.lexsort((c, r))
        r, c, v = r[order], c[order].astype(np.int32), v[order]
        counts = np.bincount(r, minlength=p.n)
        if counts.min() == 0:
            return None
        indptr = np.r_[0, np.cumsum(counts)].astype(np.int32)
        if (maximum_bipartite_matching(csr_matrix((np.ones(len(c)), c, indptr), shape=(p.n, p.n)),
                                       perm_type="column") < 0).any():
            return None
        cost = v.max() - v
        if cost.max() >= lap.LARGE / 10:  # lapmod refuses costs >= lap.LARGE; scaling keeps the optimum
            cost *= (lap.LARGE / 10) / cost.max()
        x = lap.lapmod(p.n, cost, indptr, c, return_cost=False)[0]
        return np.stack([np.arange(p.n), np.asarray(x, np.int64)], axis=1)


def _random_candidates(n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``k`` random columns per row (all columns when ``k >= n - 1``), without repeats."""
    if k >= n - 1:
        return np.divmod(np.arange(n * n), n)
    c = np.sort(rng.integers(0, n, size=(n, k)), axis=1)
    first = np.ones((n, k), bool)
    first[:, 1:] = c[:, 1:] != c[:, :-1]
    r = np.broadcast_to(np.arange(n)[:, None], (n, k))
    return r[first], c[first]


def _score_candidates(p: _Problem, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k best allowed pairs of each row by noisy score ``v = s + K u``, with their ``v``.

    Noise is drawn only where it can matter. Every few columns give, per row, a guess ``g`` of its
    k-th best ``v`` and a sure lower bound ``b`` of it (the (k + h)-th best, h = remembered pairs of the
    row). Pairs with ``s < g - K`` cannot reach ``g``, so when k allowed pairs reach ``g`` the k best of
    them are exact; rows where fewer do are redone the same way with ``b`` in place of ``g``.
    """
    n = p.n
    stride = max(1, n // max(8 * k, n // 8))
    sample = slice(int(rng.integers(stride)), None, stride)
    cols = np.arange(n)[sample]
    m = len(cols)
    step = max(1, _BLOCK_ENTRIES // n)
    out_r, out_c, out_v = [], [], []
    for r0 in range(0, n, step):
        rows = np.arange(r0, min(r0 + step, n))
        block = p.scores[r0:r0 + len(rows)]
        vs = np.array(block[:, sample], dtype=np.float64)
        if p.K:
            vs += p.K * p.noise(rows[:, None], cols[None, :])
        vs[p.whale[rows][:, None] == p.whale[cols][None, :]] = -np.inf
        t = k + int(p.hist_count[rows].max())
        if t <= m:
            q = min(t, 2 * -(-t * m // n) + 2)
            part = np.partition(vs, [m - t, m - q], axis=1)
            sure, guess = part[:, m - t], part[:, m - q]
        else:
            sure = guess = np.full(len(rows), -np.inf)
        r, c, v = _candidates_above(p, rows, block, guess, guess, k)
        redo = np.bincount(r, minlength=len(rows)) < k  # fewer than k reach the guess
        if redo.any():
            sub = np.flatnonzero(redo)
            r2, c2, v2 = _candidates_above(p, rows[sub], block[sub], sure[sub], sure[sub], k)
            keep = ~redo[r]
            r, c, v = np.r_[r[keep], sub[r2]], np.r_[c[keep], c2], np.r_[v[keep], v2]
        out_r.append(r + r0)
        out_c.append(c)
        out_v.append(v)
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_v)


def _candidates_above(p: _Problem, rows: np.ndarray, block: np.ndarray, level: np.ndarray,
                      floor: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top k allowed ``v`` per row among pairs with ``s >= level - K`` and ``v >= floor`` (block-local rows)."""
    cut = np.nextafter((level - p.K).astype(block.dtype), -np.inf)  # rounded down: a superset
    flat = np.flatnonzero(block >= cut[:, None])
    if len(flat) > block.size // 8:  # little to rule out: cheaper on the whole block
        return _block_top_k(p, rows, block, k)
    r, c = np.divmod(flat, p.n)
    keep = p.allowed(rows[r], c)
    r, c, flat = r[keep], c[keep], flat[keep]
    v = block.ravel()[flat].astype(np.float64)
    if p.K:
        v += p.K * p.noise(rows[r], c)
    keep = v >= floor[r]
    return _top_k_per_row(r[keep], c[keep], v[keep], len(rows), k)


def _block_top_k(p: _Problem, rows: np.ndarray, block: np.ndarray, k: int):
    """Top k allowed ``v`` per row from the whole rows (block-local rows)."""
    v = block.astype(np.float64)
    if p.K:
        v += p.K * p.noise(rows[:, None], np.arange(p.n)[None, :])
    v[p.whale[rows][:, None] == p.whale[None, :]] = -np.inf
    t = min(p.n, k + int(p.hist_count[rows].max()))  # room for the remembered pairs, removed next
    c = np.argpartition(v, p.n - t, axis=1)[:, p.n - t:]
    vals = np.take_along_axis(v, c, axis=1).ravel()
    r = np.repeat(np.arange(len(rows)), t)
    c = c.ravel()
    keep = (vals > -np.inf) & p.allowed(rows[r], c)
    return _top_k_per_row(r[keep], c[keep], vals[keep], len(rows), k)
