"""The one cache mechanism for per-photo artefacts (branch features, SIFT keypoints, local features), kept per photo.

A cache file is an ``.npz`` holding a set of rows (one per photo: the artefact's arrays, the image ``names``) and
one ``keys`` entry per row. A row's key covers what its artefact depends on: the photo's bytes (a SHA-1 of the
file), its box and the producer's settings (crop margin, checkpoint, size ...). So a replaced photo, a new box or
another model never reuses a stale row, while the rows of unchanged photos are reused when the set grows: a
catalog with a new batch of photos added costs the new photos only. Rows are looked up in the cache file and in
the other cache files of its folder (a photo matched as a query in one batch and added to the catalog after it
is not extracted twice). A truncated or foreign cache file reads as empty and is recomputed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from data.distributed import SINGLE, Shards
from data.errors import InputError
from data.io import load_npz, save_npz


@lru_cache(maxsize=1 << 16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-1 of a file's bytes (remembered for this process while its size and modification time hold)."""
    path = Path(path).resolve()
    stat = path.stat()
    return _file_digest(str(path), stat.st_size, stat.st_mtime_ns)


def row_keys(settings: str, paths: Sequence[str | Path], boxes: Sequence) -> np.ndarray:
    """One key per photo: a digest of ``settings`` (everything else the artefact depends on), the photo's bytes and
    its box."""
    return np.asarray([hashlib.sha1(f"{settings}|{file_digest(p)}|{box}".encode()).hexdigest()
                       for p, box in zip(paths, boxes, strict=True)], dtype=str)


class RowSet(Protocol):
    names: np.ndarray

    def __len__(self) -> int: ...

    def take(self, rows) -> RowSet: ...


S = TypeVar("S", bound=RowSet)


class Rows:
    """Arrays with one row per photo (e.g. ``features``), the plain :class:`RowSet`."""

    def __init__(self, names: np.ndarray, **arrays: np.ndarray):
        self.names = np.asarray(names, dtype=str)
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def take(self, rows) -> Rows:
        return Rows(self.names[rows], **{k: v[rows] for k, v in self.arrays.items()})

    @classmethod
    def concat(cls, sets: Sequence[Rows]) -> Rows:
        return Rows(np.concatenate([s.names for s in sets]),
                    **{k: np.concatenate([s.arrays[k] for s in sets]) for k in sets[0].arrays})

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"names": self.names, **self.arrays}

    @classmethod
    def from_arrays(cls, stored: dict[str, np.ndarray]) -> Rows:
        return cls(stored["names"], **{k: v for k, v in stored.items() if k not in ("names", "keys")})


def _read(path: Path, load: Callable[[dict], S]) -> tuple[S, np.ndarray] | None:
    try:
        stored = load_npz(path)
        if "keys" not in stored or "names" not in stored or len(stored["keys"]) != len(stored["names"]):
            return None
        return load(stored), stored["keys"].astype(str)
    except (InputError, KeyError, ValueError):
        return None


def _lookup(cache: Path, keys: np.ndarray, load: Callable[[dict], S]
            ) -> list[tuple[Path, S, np.ndarray, np.ndarray]]:
    """(file, set, its row keys, the rows of it that hold ``keys``: -1 where it has none) of the cache and of its
    sibling files that hold some of ``keys``, the cache first, as far as they are needed."""
    found, wanted = [], np.ones(len(keys), bool)
    # hidden files are other processes' parts and fresh rows being written (torchrun): never siblings
    siblings = (sorted(p for p in cache.parent.glob("*.npz") if p != cache and not p.name.startswith("."))
                if cache.parent.is_dir() else [])
    for path in [cache, *siblings]:
        if not wanted.any():
            break
        read = _read(path, load) if path.is_file() else None
        if read is None:
            continue
        stored, stored_keys = read
        where = {k: i for i, k in enumerate(stored_keys)}
        rows = np.asarray([where.get(k, -1) if w else -1 for k, w in zip(keys, wanted)], dtype=np.int64)
        if (rows >= 0).any():
            found.append((path, stored, stored_keys, rows))
            wanted &= rows < 0
    return found


def cached_set(cache: Path, keys: np.ndarray, names: Sequence[str], *, compute: Callable[[np.ndarray], S],
               load: Callable[[dict], S], to_arrays: Callable[[S], dict], concat: Callable[[Sequence[S]], S],
               shards: Shards = SINGLE) -> S:
    """The set of ``names`` (row keys ``keys``, :func:`row_keys`): rows found under those keys in ``cache`` or its
    folder are reused, ``compute(indices)`` makes the others (the set of those photos, in that order). When any
    row was computed or came from another file, the set is written to ``cache``, with the rows the cache held
    before when it held some of the set (a subset asked for never shrinks a cache; a cache with none of it, made
    with other settings or for another batch, is replaced). With several ``shards`` each process computes its share of
    the missing rows and rank 0 writes the file; every process returns the whole set."""
    cache, keys, names = Path(cache), np.asarray(keys, dtype=str), np.asarray(names, dtype=str)
    if not len(keys):
        return compute(np.zeros(0, dtype=np.int64))
    found = _lookup(cache, keys, load)
    have = np.zeros(len(keys), bool)
    for *_, rows in found:
        have |= rows >= 0
    missing = np.flatnonzero(~have)
    if not missing.size and len(found) == 1 and found[0][0] == cache:
        _, stored, _, rows = found[0]
        if len(stored) == len(keys) and np.array_equal(rows, np.arange(len(keys))) \
                and np.array_equal(stored.names, names):
            return stored  # the cache holds exactly this set
    fresh_path = cache.with_name(f".{cache.stem}.fresh{cache.suffix}")
    if missing.size:
        mine = missing[shards.rows(len(missing))]

        def write_part(path: Path) -> None:
            save_npz(path, **to_arrays(compute(mine)), keys=keys[mine])

        def join(parts: list[Path], path: Path) -> None:
            save_npz(path, **to_arrays(concat([load(load_npz(p)) for p in parts])),
                     keys=np.concatenate([load_npz(p)["keys"] for p in parts]))

        shards.assemble(fresh_path, write_part, join)
    pieces, order, start = [], np.empty(len(keys), dtype=np.int64), 0
    for _, stored, _, rows in found:
        hit = np.flatnonzero(rows >= 0)
        pieces.append(stored.take(rows[hit]))
        order[hit] = start + np.arange(len(hit))
        start += len(hit)
    if missing.size:
        pieces.append(load(load_npz(fresh_path)))
        order[missing] = start + np.arange(len(missing))
    whole = concat(pieces).take(order)
    whole.names = names  # a photo's row may have been made under another name (the same bytes)
    if missing.size or any(path != cache for path, *_ in found):  # new rows, or rows from a sibling: write
        shards.barrier()  # every process has read the fresh rows
        if shards.main:
            # the rows of the cache file that this set did not ask for stay: a subset (the review page's
            # candidates) must not shrink the catalog's cache
            own = next(((stored, stored_keys, rows) for path, stored, stored_keys, rows in found if path == cache),
                       None)
            kept = [] if own is None else np.setdiff1d(np.arange(len(own[0])), own[2][own[2] >= 0])
            if len(kept):
                whole_and_old = concat([whole, own[0].take(kept)])
                save_npz(cache, **to_arrays(whole_and_old), keys=np.concatenate([keys, own[1][kept]]))
            else:
                save_npz(cache, **to_arrays(whole), keys=keys)
            fresh_path.unlink(missing_ok=True)
        shards.barrier()
    return whole


def cached_rows(cache: Path, keys: np.ndarray, names: Sequence[str], compute: Callable[[np.ndarray], Rows], *,
                shards: Shards = SINGLE) -> Rows:
    """:func:`cached_set` for plain :class:`Rows`."""
    return cached_set(cache, keys, names, compute=compute, load=Rows.from_arrays, to_arrays=Rows.to_arrays,
                      concat=Rows.concat, shards=shards)


def cached_pairs(cache: Path, query_keys: np.ndarray, gallery_keys: np.ndarray, pairs: np.ndarray,
                 compute: Callable[[np.ndarray], np.ndarray], *, shards: Shards = SINGLE) -> np.ndarray:
    """[P] a value per ``(query row, gallery row)`` pair (a matcher's count), reused from ``cache`` for pairs of photos
    it has seen under the same row keys (:func:`row_keys`: the photos' bytes, boxes and the features' settings;
    the matcher's own settings name the file); ``compute(pairs)`` gives the others. The leave-one-out queries of a
    grown catalog meet mostly the pairs of the batch before. With several ``shards`` (every process asking for the
    same pairs) each computes its share of the missing pairs, every process returns them all and rank 0 writes."""
    cache, pairs = Path(cache), np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    wanted = np.char.add(np.char.add(np.asarray(query_keys, str)[pairs[:, 0]], "|"),
                         np.asarray(gallery_keys, str)[pairs[:, 1]]) if len(pairs) else np.zeros(0, str)
    stored_keys, stored_values = np.zeros(0, str), np.zeros(0, np.float32)
    if cache.is_file():
        try:
            stored = load_npz(cache)
            stored_keys, stored_values = stored["pairs"].astype(str), stored["values"].astype(np.float32)
        except (InputError, KeyError):
            pass
    where = {k: i for i, k in enumerate(stored_keys)}
    hit = np.asarray([where.get(k, -1) for k in wanted], dtype=np.int64)
    out = np.zeros(len(pairs), np.float32)
    out[hit >= 0] = stored_values[hit[hit >= 0]]
    missing = np.flatnonzero(hit < 0)
    if missing.size:
        mine = missing[shards.rows(len(missing))]
        out[missing] = shards.gather_rows(np.asarray(compute(pairs[mine]), np.float32))
        if shards.main:
            save_npz(cache, pairs=np.concatenate([stored_keys, wanted[missing]]),
                     values=np.concatenate([stored_values, out[missing]]).astype(np.float32))
        shards.barrier()
    return out
