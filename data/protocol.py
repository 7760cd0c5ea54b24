"""A held-out evaluation protocol made from a labelled catalog alone.

From ``train.csv`` + ``train/`` of a catalog, a seeded split makes a new data folder in the ``--data-dir``
layout, ready for the whole pipeline and for ``scripts/evaluate.py``:

- some individuals are held out whole: their photos become queries whose truth is ``new_whale``;
- of every remaining individual with at least ``min_photos`` photos, ``queries_per_individual`` photos
  become queries whose truth is the individual's Id (so each keeps ``min_photos - queries_per_individual``
  or more photos in the catalog: no individual is ever left without one);
- ``new_whale`` photos of the source (unidentified animals) stay in the catalog.

The folder holds ``train.csv`` (the remaining catalog, in source order), ``train/`` (its photos),
``test/`` (the queries, renamed ``q_00000.jpg``, ... in a seeded order, so that a name reveals neither
the Id nor the source photo), ``truth.csv`` (``Image,Id`` of the queries), ``boxes.csv`` (the source's
rows, renamed for queries, when the source has one), ``queries.csv`` (``Image,Source``: which source
photo each query is) and ``protocol.json`` (settings and counts). Photos are hard links where possible,
symbolic links otherwise, copies as a last resort. Everything is written into a temporary folder beside
``out`` and renamed into place, so ``out`` is never half-written. The same source and settings give
byte-identical files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data.catalog import NEW_WHALE, read_boxes, read_train_csv
from data.errors import InputError
from data.io import place_file, staged_dir

QUERY_PREFIX = "q_"
LINK_MODES = ("auto", "hardlink", "symlink", "copy")


@dataclass(frozen=True)
class ProtocolConfig:
    """Settings of the split. ``new_individual_share``: share of the catalog's individuals held out whole;
    ``queries_per_individual`` photos are held out of every other individual that has ``min_photos`` or more;
    ``max_new_photos``: at most this many photos of a held-out individual become queries (0: all)."""

    seed: int = 0
    new_individual_share: float = 0.2
    queries_per_individual: int = 1
    min_photos: int = 3
    max_new_photos: int = 0

    def check(self) -> None:
        if not 0.0 <= self.new_individual_share < 1.0:
            raise ValueError(f"new_individual_share must be in [0, 1), got {self.new_individual_share}")
        if self.queries_per_individual < 0:
            raise ValueError(f"queries_per_individual must be >= 0, got {self.queries_per_individual}")
        if self.min_photos <= self.queries_per_individual:
            raise ValueError(f"min_photos ({self.min_photos}) must exceed queries_per_individual "
                             f"({self.queries_per_individual}) so that every individual keeps a photo")
        if self.max_new_photos < 0:
            raise ValueError(f"max_new_photos must be >= 0 (0: all), got {self.max_new_photos}")


@dataclass(frozen=True)
class Split:
    """The catalog rows that remain and the queries (``Image`` new name, ``Id`` truth, ``Source`` name)."""

    catalog: pd.DataFrame
    queries: pd.DataFrame
    new_individuals: list[str]
    unused_photos: int
    """Photos of held-out individuals beyond ``max_new_photos``: in neither the catalog nor the queries."""


@dataclass
class ProtocolSummary:
    out: Path
    source_photos: int
    source_individuals: int
    catalog_photos: int
    catalog_individuals: int
    catalog_new_whale: int
    queries: int
    known_queries: int
    new_whale_queries: int
    new_individuals: int
    unused_photos: int
    links: dict[str, int] = field(default_factory=dict)

    @property
    def new_whale_share(self) -> float:
        return self.new_whale_queries / self.queries if self.queries else 0.0

    def lines(self) -> list[str]:
        links = ", ".join(f"{n} {kind}" for kind, n in self.links.items() if n)
        return [
            f"wrote {self.out}/",
            f"  source:  {self.source_photos} photos of {self.source_individuals} individuals",
            f"  catalog: train.csv {self.catalog_photos} photos: {self.catalog_photos - self.catalog_new_whale} "
            f"of {self.catalog_individuals} individuals + {self.catalog_new_whale} new_whale",
            f"  queries: test/ {self.queries} photos, truth.csv: {self.known_queries} of catalog individuals, "
            f"{self.new_whale_queries} new_whale ({self.new_whale_share:.1%}) from {self.new_individuals} "
            f"held-out individuals",
            f"  unused:  {self.unused_photos} photos of held-out individuals beyond the per-individual cap",
            f"  photos:  {links}",
        ]


def _query_names(sources: list[str], taken: set[str]) -> list[str]:
    """``q_00000.jpg``, ... (source suffix kept) avoiding every name in ``taken``."""
    width = max(5, len(str(len(sources) - 1)))
    prefix = QUERY_PREFIX
    while True:
        names = [f"{prefix}{i:0{width}d}{Path(s).suffix}" for i, s in enumerate(sources)]
        if not taken.intersection(names):
            return names
        prefix = "x" + prefix


def split_catalog(train: pd.DataFrame, cfg: ProtocolConfig) -> Split:
    """The seeded split of a validated ``train.csv`` frame (``Image,Id``); see the module docstring."""
    cfg.check()
    rng = np.random.default_rng(cfg.seed)
    known = train[train["Id"] != NEW_WHALE]
    groups = {ident: sorted(g["Image"]) for ident, g in known.groupby("Id", sort=True)}
    individuals = sorted(groups)
    if not individuals:
        raise ValueError("the catalog has no identified individual (only new_whale)")
    n_new = int(round(cfg.new_individual_share * len(individuals)))
    n_new = min(n_new, len(individuals) - 1)
    order = rng.permutation(len(individuals))
    new_individuals = sorted(individuals[i] for i in order[:n_new])
    held_new = set(new_individuals)

    rows: list[tuple[str, str]] = []  # (source image, truth)
    unused = 0
    for ident in individuals:
        photos = groups[ident]
        if ident in held_new:
            chosen = photos
            if cfg.max_new_photos and len(photos) > cfg.max_new_photos:
                pick = sorted(rng.choice(len(photos), size=cfg.max_new_photos, replace=False))
                chosen = [photos[i] for i in pick]
                unused += len(photos) - len(chosen)
            rows.extend((name, NEW_WHALE) for name in chosen)
        elif cfg.queries_per_individual and len(photos) >= cfg.min_photos:
            pick = sorted(rng.choice(len(photos), size=cfg.queries_per_individual, replace=False))
            rows.extend((photos[i], ident) for i in pick)
    if not rows:
        raise ValueError("the settings hold out no query photo (no individual has enough photos?)")

    removed = {name for ident in new_individuals for name in groups[ident]} | {name for name, _ in rows}
    catalog = train[~train["Image"].isin(removed)].reset_index(drop=True)
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    sources = [s for s, _ in shuffled]
    names = _query_names(sources, set(catalog["Image"]))
    queries = pd.DataFrame({"Image": names, "Id": [t for _, t in shuffled], "Source": sources})
    return Split(catalog=catalog, queries=queries, new_individuals=new_individuals, unused_photos=unused)


def _is_replaceable(out: Path) -> bool:
    """An empty folder, or one made by this module (it has protocol.json and truth.csv)."""
    return out.is_dir() and (not any(out.iterdir()) or ((out / "protocol.json").is_file()
                                                        and (out / "truth.csv").is_file()))


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    df.to_csv(path, index=False, lineterminator="\n")


def write_protocol(data_dir: str | Path, out: str | Path, cfg: ProtocolConfig, *, link: str = "auto",
                   force: bool = False) -> ProtocolSummary:
    """Split the catalog of ``data_dir`` and write the protocol folder ``out`` (see the module docstring)."""
    cfg.check()
    if link not in LINK_MODES:
        raise ValueError(f"link must be one of {', '.join(LINK_MODES)}, got {link!r}")
    data_dir, out = Path(data_dir), Path(out)
    if not data_dir.is_dir():
        raise InputError(data_dir, "data folder not found")
    src, dst = data_dir.resolve(), out.resolve()
    if dst == src or dst in src.parents:
        raise InputError(out, f"must not be the source folder {data_dir} or contain it")
    if out.exists() and not force:
        raise InputError(out, "already exists; use --force to replace it")
    if out.exists() and not _is_replaceable(out):
        raise InputError(out, "exists and is not a protocol folder (no protocol.json); refusing to replace it")
    train_csv = data_dir / "train.csv"
    train = read_train_csv(train_csv)
    missing = [n for n in train["Image"] if not (data_dir / "train" / n).is_file()]
    if missing:
        raise InputError(train_csv, f"{len(missing)} image(s) not found in {data_dir / 'train'} "
                                    f"(first: {missing[0]!r})")
    boxes_csv = data_dir / "boxes.csv"
    boxes = read_boxes(boxes_csv) if boxes_csv.is_file() else None
    try:
        split = split_catalog(train, cfg)
    except ValueError as err:
        raise InputError(train_csv, str(err)) from None

    links = dict.fromkeys(("hardlink", "symlink", "copy"), 0)
    with staged_dir(out) as tmp:
        for name in split.catalog["Image"]:
            links[place_file(data_dir / "train" / name, tmp / "train" / name, link)] += 1
        (tmp / "test").mkdir()
        for name, source in zip(split.queries["Image"], split.queries["Source"], strict=True):
            links[place_file(data_dir / "train" / source, tmp / "test" / name, link)] += 1
        _write_csv(split.catalog[["Image", "Id"]], tmp / "train.csv")
        _write_csv(split.queries[["Image", "Id"]], tmp / "truth.csv")
        _write_csv(split.queries[["Image", "Source"]], tmp / "queries.csv")
        if boxes is not None:
            renamed = dict(zip(split.queries["Source"], split.queries["Image"], strict=True))
            keep = set(split.catalog["Image"])
            rows = [(renamed.get(name, name), *box) for name, box in boxes.items() if name in keep or name in renamed]
            df = pd.DataFrame(rows, columns=["Image", "x0", "y0", "x1", "y1"])
            _write_csv(df.sort_values("Image", kind="stable"), tmp / "boxes.csv")
        summary = _summary(out, train, split, links)
        record = {
            "source": str(data_dir),
            "settings": asdict(cfg),
            "counts": {k: v for k, v in asdict(summary).items() if k not in ("out", "links")},
            "new_whale_share": summary.new_whale_share,
            "new_individuals": split.new_individuals,
        }
        (tmp / "protocol.json").write_text(json.dumps(record, indent=2) + "\n")
    return summary


def _summary(out: Path, train: pd.DataFrame, split: Split, links: dict[str, int]) -> ProtocolSummary:
    source_known = train[train["Id"] != NEW_WHALE]
    cat = split.catalog
    cat_known = cat[cat["Id"] != NEW_WHALE]
    new_q = int((split.queries["Id"] == NEW_WHALE).sum())
    return ProtocolSummary(
        out=out,
        source_photos=len(train),
        source_individuals=int(source_known["Id"].nunique()),
        catalog_photos=len(cat),
        catalog_individuals=int(cat_known["Id"].nunique()),
        catalog_new_whale=int((cat["Id"] == NEW_WHALE).sum()),
        queries=len(split.queries),
        known_queries=len(split.queries) - new_q,
        new_whale_queries=new_q,
        new_individuals=len(split.new_individuals),
        unused_photos=split.unused_photos,
        links=links,
    )
