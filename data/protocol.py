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

N-way one-shot tasks (:func:`write_one_shot`, the Omniglot benchmark of Lake et al. and Koch et al. 2015):
whole groups of classes (a class's group is its Id before the first '/', e.g. an Omniglot alphabet) are held
out; ``catalog/`` is the training catalog of the other groups, and every ``task_000/``, ... is a data folder
with one photo per class of N held-out classes in ``train/`` and one other photo of each as a query in
``test/`` (with ``truth.csv`` and ``queries.csv`` as above). ``class_rotations`` 2 or 4 adds each training
class turned by 180 degrees (2) or by 90, 180 and 270 degrees (4) to ``catalog/`` as classes of their own
(``<Id>@r90`` ...), as Vinyals et al. and Snell et al. multiplied Omniglot's training classes; tasks are never
rotated.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

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
    """An empty folder, or one made by this module (protocol.json beside truth.csv or catalog/train.csv)."""
    if not out.is_dir():
        return False
    if not any(out.iterdir()):
        return True
    made = (out / "truth.csv").is_file() or (out / "catalog" / "train.csv").is_file()
    return (out / "protocol.json").is_file() and made


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    df.to_csv(path, index=False, lineterminator="\n")


def _read_source(data_dir: Path, out: Path, link: str, force: bool) -> tuple[pd.DataFrame, dict | None]:
    """The validated ``train.csv`` and boxes (or None) of ``data_dir``, after checking that ``out`` may be
    written (not the source, not an existing folder unless ``force`` and made by this module)."""
    if link not in LINK_MODES:
        raise ValueError(f"link must be one of {', '.join(LINK_MODES)}, got {link!r}")
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
    return train, (read_boxes(boxes_csv) if boxes_csv.is_file() else None)


def _boxes_frame(boxes: dict, keep: set[str], renamed: dict[str, str]) -> pd.DataFrame:
    """``boxes.csv`` rows of the photos in ``keep`` and, under their new names, of the sources in ``renamed``."""
    rows = [(renamed.get(name, name), *box) for name, box in boxes.items() if name in keep or name in renamed]
    df = pd.DataFrame(rows, columns=["Image", "x0", "y0", "x1", "y1"])
    return df.sort_values("Image", kind="stable")


def _split(split, train: pd.DataFrame, cfg, data_dir: Path):
    """``split(train, cfg)``; a catalog it cannot split is an InputError naming its ``train.csv``."""
    try:
        return split(train, cfg)
    except ValueError as err:
        raise InputError(data_dir / "train.csv", str(err)) from None


def write_protocol(data_dir: str | Path, out: str | Path, cfg: ProtocolConfig, *, link: str = "auto",
                   force: bool = False) -> ProtocolSummary:
    """Split the catalog of ``data_dir`` and write the protocol folder ``out`` (see the module docstring)."""
    cfg.check()
    data_dir, out = Path(data_dir), Path(out)
    train, boxes = _read_source(data_dir, out, link, force)
    split = _split(split_catalog, train, cfg, data_dir)

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
            _write_csv(_boxes_frame(boxes, set(split.catalog["Image"]), renamed), tmp / "boxes.csv")
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


# N-way one-shot tasks (Lake et al. 2015; Koch et al. 2015) --------------------------------------------------

TASK_PREFIX = "task_"


def group_of(ident: str) -> str:
    """The group of a class: its Id before the first '/' (an Omniglot alphabet), or the whole Id."""
    return ident.split("/", 1)[0]


@dataclass(frozen=True)
class OneShotConfig:
    """Settings of N-way one-shot tasks. ``held_out_groups`` whole groups (chosen by ``seed``), or exactly the
    named ``groups``, are held out of the training catalog; ``tasks`` tasks of ``ways`` classes each are drawn
    from their classes, with one catalog photo (the shot) and one other photo (the query) per class."""

    ways: int = 20
    tasks: int = 20
    held_out_groups: int = 2
    groups: tuple[str, ...] = ()
    seed: int = 0
    class_rotations: int = 1  # 2 or 4: the training classes turned by 180 (or 90, 180, 270) degrees as new classes

    def check(self) -> None:
        if self.class_rotations not in ROTATIONS:
            raise ValueError(f"class_rotations must be one of {', '.join(map(str, ROTATIONS))}, "
                             f"got {self.class_rotations}")
        if self.ways < 2:
            raise ValueError(f"ways must be >= 2, got {self.ways}")
        if self.tasks < 1:
            raise ValueError(f"tasks must be >= 1, got {self.tasks}")
        if self.held_out_groups < 1:
            raise ValueError(f"held_out_groups must be >= 1, got {self.held_out_groups}")
        if self.groups and len(set(self.groups)) != len(self.groups):
            raise ValueError(f"groups are listed twice: {' '.join(self.groups)}")
        if self.groups and self.held_out_groups != len(self.groups):
            raise ValueError(f"held_out_groups ({self.held_out_groups}) differs from the {len(self.groups)} "
                             "groups named")


@dataclass(frozen=True)
class OneShotTask:
    """One task: ``shots`` (``Image,Id``: one catalog photo per class, by Id) and ``queries`` (``Image`` new
    name, ``Id`` truth, ``Source`` photo) in a seeded order; ``groups`` the classes come from."""

    name: str
    groups: tuple[str, ...]
    shots: pd.DataFrame
    queries: pd.DataFrame


@dataclass(frozen=True)
class OneShotSplit:
    """The training catalog (rows of the groups not held out, ``new_whale`` kept) and the tasks."""

    catalog: pd.DataFrame
    held_out_groups: list[str]
    held_out_classes: int
    unusable_classes: int
    """Held-out classes with a single photo (no shot and query pair): in no task."""
    tasks: list[OneShotTask]


def _held_out(all_groups: list[str], cfg: OneShotConfig, rng: np.random.Generator) -> list[str]:
    """The named groups (checked), or ``cfg.held_out_groups`` of them drawn by ``rng``; always sorted."""
    if cfg.groups:
        unknown = sorted(set(cfg.groups) - set(all_groups))
        if unknown:
            raise ValueError(f"unknown group(s) {' '.join(unknown)} (the catalog has: {' '.join(all_groups)})")
    if cfg.held_out_groups >= len(all_groups):
        raise ValueError(f"holding out {cfg.held_out_groups} of the {len(all_groups)} groups leaves no training "
                         "catalog (hold out fewer)")
    if cfg.groups:
        return sorted(cfg.groups)
    order = rng.permutation(len(all_groups))
    return sorted(all_groups[i] for i in order[:cfg.held_out_groups])


def _task_classes(pools: dict[str, list[str]], cfg: OneShotConfig, rng: np.random.Generator) -> list[list[str]]:
    """The classes of every task: from one group (round robin over the groups with ``ways`` classes or more, in
    a seeded order) where one is large enough, else from all held-out groups together."""
    single = [g for g in sorted(pools) if len(pools[g]) >= cfg.ways]
    union = sorted(c for g in sorted(pools) for c in pools[g])
    order = [single[i] for i in rng.permutation(len(single))]
    chosen = []
    for t in range(cfg.tasks):
        pool = pools[order[t % len(order)]] if order else union
        chosen.append(sorted(pool[i] for i in rng.choice(len(pool), size=cfg.ways, replace=False)))
    return chosen


def _make_task(name: str, classes: list[str], photos: dict[str, list[str]], rng: np.random.Generator) -> OneShotTask:
    """One shot and one query (another photo) per class; queries renamed in a seeded order."""
    shots, sources = [], []
    for ident in classes:
        shot, query = rng.choice(len(photos[ident]), size=2, replace=False)
        shots.append(photos[ident][shot])
        sources.append(photos[ident][query])
    order = rng.permutation(len(classes))
    ordered = [sources[i] for i in order]
    names = _query_names(ordered, set(shots))
    queries = pd.DataFrame({"Image": names, "Id": [classes[i] for i in order], "Source": ordered})
    groups = tuple(sorted({group_of(c) for c in classes}))
    return OneShotTask(name, groups, pd.DataFrame({"Image": shots, "Id": classes}), queries)


def one_shot_split(train: pd.DataFrame, cfg: OneShotConfig) -> OneShotSplit:
    """The seeded one-shot split of a validated ``train.csv`` frame (``Image,Id``); ``new_whale`` photos stay
    in the training catalog and are in no task. Raises ``ValueError`` when the held-out classes are too few."""
    cfg.check()
    rng = np.random.default_rng(cfg.seed)
    known = train[train["Id"] != NEW_WHALE]
    photos = {ident: sorted(g["Image"]) for ident, g in known.groupby("Id", sort=True)}
    all_groups = sorted({group_of(ident) for ident in photos})
    if not all_groups:
        raise ValueError("the catalog has no identified class (only new_whale)")
    held = _held_out(all_groups, cfg, rng)
    held_classes = [c for c in photos if group_of(c) in held]
    pools = {g: [c for c in held_classes if group_of(c) == g and len(photos[c]) >= 2] for g in held}
    usable = sum(len(p) for p in pools.values())
    if usable < cfg.ways:
        raise ValueError(f"the held-out group(s) {' '.join(held)} have {usable} classes with 2 or more photos; "
                         f"{cfg.ways}-way tasks need {cfg.ways} (hold out more or larger groups, or fewer ways)")
    width = max(3, len(str(cfg.tasks - 1)))
    tasks = [_make_task(f"{TASK_PREFIX}{t:0{width}d}", classes, photos, rng)
             for t, classes in enumerate(_task_classes(pools, cfg, rng))]
    keep = ~train["Id"].map(lambda i: i != NEW_WHALE and group_of(i) in held)
    return OneShotSplit(catalog=train[keep].reset_index(drop=True), held_out_groups=held,
                        held_out_classes=len(held_classes), unusable_classes=len(held_classes) - usable,
                        tasks=tasks)


@dataclass
class OneShotSummary:
    out: Path
    source_photos: int
    source_classes: int
    source_groups: int
    held_out_groups: list[str]
    held_out_classes: int
    unusable_classes: int
    catalog_photos: int
    catalog_classes: int
    tasks: int
    ways: int
    single_group_tasks: int
    rotated_photos: int = 0
    links: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        links = ", ".join(f"{n} {kind}" for kind, n in self.links.items() if n)
        return [
            f"wrote {self.out}/",
            f"  source:   {self.source_photos} photos of {self.source_classes} classes in {self.source_groups} groups",
            f"  held out: {len(self.held_out_groups)} groups ({', '.join(self.held_out_groups)}), "
            f"{self.held_out_classes} classes ({self.unusable_classes} with a single photo, in no task)",
            f"  catalog/: train.csv {self.catalog_photos} photos of {self.catalog_classes} classes (for training"
            + (f"; {self.rotated_photos} of them rotated copies)" if self.rotated_photos else ")"),
            f"  tasks:    {self.tasks} x {self.ways}-way one-shot ({self.single_group_tasks} from a single group), "
            f"{TASK_PREFIX}*/ each with train/ (one shot per class), test/ (one query per class), truth.csv",
            f"  photos:   {links}",
        ]


def _place_task(task: OneShotTask, data_dir: Path, folder: Path, boxes: dict | None, link: str,
                links: dict[str, int]) -> None:
    """Write one task folder: train.csv + train/ (the shots), test/ (the queries), truth.csv, queries.csv."""
    for name in task.shots["Image"]:
        links[place_file(data_dir / "train" / name, folder / "train" / name, link)] += 1
    for name, source in zip(task.queries["Image"], task.queries["Source"], strict=True):
        links[place_file(data_dir / "train" / source, folder / "test" / name, link)] += 1
    _write_csv(task.shots, folder / "train.csv")
    _write_csv(task.queries[["Image", "Id"]], folder / "truth.csv")
    _write_csv(task.queries[["Image", "Source"]], folder / "queries.csv")
    if boxes is not None:
        renamed = dict(zip(task.queries["Source"], task.queries["Image"], strict=True))
        _write_csv(_boxes_frame(boxes, set(task.shots["Image"]), renamed), folder / "boxes.csv")


ROTATIONS = (1, 2, 4)


def rotated_name(name: str, degrees: int) -> str:
    """The catalog name of photo ``name`` turned by ``degrees``: ``<stem>_r<degrees><suffix>`` beside it."""
    path = Path(name)
    return str(path.with_name(f"{path.stem}_r{degrees}{path.suffix}"))


def _rotated_classes(catalog: pd.DataFrame, folder: Path, rotations: int) -> pd.DataFrame:
    """Write every identified photo of ``catalog`` (names relative to ``folder``) turned by 180 degrees
    (``rotations`` 2) or by 90, 180 and 270 (4) beside it; their rows (``Image,Id``, the Id ``<Id>@r<degrees>``:
    a class of its own, of the same group). Turns are exact (whole pixels, counter-clockwise)."""
    turns = {1: [], 2: [2], 4: [1, 2, 3]}[rotations]
    known = catalog[catalog["Id"] != NEW_WHALE]
    rows = []
    for k in turns:
        degrees = 90 * k
        transpose = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}[k]
        for name, ident in zip(known["Image"], known["Id"], strict=True):
            target = rotated_name(name, degrees)
            with Image.open(folder / name) as image:
                image.transpose(transpose).save(folder / target, format=image.format)
            rows.append({"Image": target, "Id": f"{ident}@r{degrees}"})
    return pd.DataFrame(rows, columns=["Image", "Id"])


def _one_shot_summary(out: Path, train: pd.DataFrame, split: OneShotSplit, cfg: OneShotConfig,
                      links: dict[str, int], rotated_photos: int) -> OneShotSummary:
    known = train[train["Id"] != NEW_WHALE]["Id"]
    cat = split.catalog[split.catalog["Id"] != NEW_WHALE]["Id"]
    return OneShotSummary(
        out=out, source_photos=len(train), source_classes=int(known.nunique()),
        source_groups=len(set(known.map(group_of))), held_out_groups=split.held_out_groups,
        held_out_classes=split.held_out_classes, unusable_classes=split.unusable_classes,
        catalog_photos=len(split.catalog), catalog_classes=int(cat.nunique()), tasks=len(split.tasks),
        ways=cfg.ways, single_group_tasks=sum(len(t.groups) == 1 for t in split.tasks),
        rotated_photos=rotated_photos, links=links)


def _one_shot_record(data_dir: Path, cfg: OneShotConfig, split: OneShotSplit, summary: OneShotSummary) -> dict:
    """The content of ``protocol.json``: settings, held-out groups, counts and the groups of every task."""
    single = sum(len(t.groups) == 1 for t in split.tasks)
    return {
        "mode": "one_shot",
        "source": str(data_dir),
        "settings": asdict(cfg),
        "held_out_groups": split.held_out_groups,
        "counts": {k: v for k, v in asdict(summary).items() if k not in ("out", "links", "held_out_groups")},
        "task_groups": "one group per task" if single == len(split.tasks) else
                       "several held-out groups per task (no held-out group has enough classes)",
        "tasks": [{"name": t.name, "groups": list(t.groups)} for t in split.tasks],
    }


def write_one_shot(data_dir: str | Path, out: str | Path, cfg: OneShotConfig, *, link: str = "auto",
                   force: bool = False) -> OneShotSummary:
    """Write the one-shot protocol folder ``out`` from the catalog of ``data_dir``: ``catalog/`` (the training
    catalog without the held-out groups), ``task_000/`` ... (one data folder per task) and ``protocol.json``.
    Staged beside ``out`` and renamed into place; the same source and settings give byte-identical files."""
    cfg.check()
    data_dir, out = Path(data_dir), Path(out)
    train, boxes = _read_source(data_dir, out, link, force)
    if cfg.class_rotations > 1 and boxes is not None:
        raise InputError(data_dir / "boxes.csv", "class rotations are for photos without boxes (a box would "
                                                 "need turning too); leave out --class-rotations or boxes.csv")
    split = _split(one_shot_split, train, cfg, data_dir)
    links = dict.fromkeys(("hardlink", "symlink", "copy"), 0)
    with staged_dir(out) as tmp:
        (tmp / "catalog" / "train").mkdir(parents=True)
        for name in split.catalog["Image"]:
            links[place_file(data_dir / "train" / name, tmp / "catalog" / "train" / name, link)] += 1
        rotated = _rotated_classes(split.catalog, tmp / "catalog" / "train", cfg.class_rotations)
        split = replace(split, catalog=pd.concat([split.catalog, rotated], ignore_index=True))
        _write_csv(split.catalog[["Image", "Id"]], tmp / "catalog" / "train.csv")
        if boxes is not None:
            _write_csv(_boxes_frame(boxes, set(split.catalog["Image"]), {}), tmp / "catalog" / "boxes.csv")
        for task in split.tasks:
            _place_task(task, data_dir, tmp / task.name, boxes, link, links)
        summary = _one_shot_summary(out, train, split, cfg, links, len(rotated))
        record = _one_shot_record(data_dir, cfg, split, summary)
        (tmp / "protocol.json").write_text(json.dumps(record, indent=2) + "\n")
    return summary
