"""A person's decisions on a batch of new photos (the review page's ``decisions.csv``), written back into the catalog.

``decisions.csv`` has a row per decided photo: ``Image,Decision``. The decision is an Id of the catalog (the photo
is that individual: confirmed), ``none`` or ``new_whale`` (none of the candidates: a new individual, given a new
Id), or ``skip`` (the photo stays out of the catalog). Photos without a row stay out too.

New Ids are ``<prefix><counter>``: the prefix (``auto_`` by default) and a four-digit counter that starts after the
largest counter already in the catalog with that prefix, so they never collide with an existing Id, and each
rejected photo gets its own.

Applying is all or nothing: every problem is found before anything is written (a photo not in the batch, a photo
decided twice, an Id the catalog does not have, a photo already in the catalog); the old ``train.csv`` (and
``boxes.csv``, ``folds.csv`` when they change) are copied to ``backups/<date-time>/`` first; the photos are
placed into ``train/`` and the CSVs replaced last, and a failure part-way puts the old files back.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from data.catalog import BOX_COLUMNS, NEW_WHALE, TRAIN_ONLY, _read_csv, load_catalog, read_boxes, read_folds
from data.errors import InputError
from data.io import place_file, write_csv

CONFIRM, NEW, SKIP = "confirm", "new", "skip"
REJECTED = ("none", NEW_WHALE)
DEFAULT_PREFIX = "auto_"


@dataclass
class Plan:
    """What applying a decisions file changes: the photos added with their Ids, and what stays out."""

    catalog: Path
    added: pd.DataFrame  # Image, Id, kind (confirm | new), source (the batch photo)
    skipped: list[str]
    undecided: list[str]
    boxes: pd.DataFrame  # Image, x0, y0, x1, y1 of the added photos that have a box

    def lines(self) -> list[str]:
        kinds = self.added["kind"].value_counts()
        out = [f"{int(kinds.get(CONFIRM, 0))} confirmed, {int(kinds.get(NEW, 0))} new Ids, "
               f"{len(self.skipped)} skipped, {len(self.undecided)} undecided (left out)"]
        out += [f"  + {r.Image} -> {r.Id}" + (" (new)" if r.kind == NEW else "") for r in self.added.itertuples()]
        return out


def read_decisions(path: str | Path) -> pd.DataFrame:
    """``Image,Decision`` rows, validated: no blank decision, no photo decided twice."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "decisions file not found")
    df = _read_csv(path, ["Image", "Decision"])
    blank = df["Decision"].str.strip() == ""
    if blank.any():
        raise InputError(path, f"line {int(blank.idxmax()) + 2}: empty Decision for {df['Image'][blank.idxmax()]!r}")
    dup = df[df.duplicated("Image", keep=False)]
    if not dup.empty:
        name = dup["Image"].iloc[0]
        lines = " and ".join(str(i + 2) for i in dup.index[dup["Image"] == name][:2])
        raise InputError(path, f"photo {name!r} is decided twice (lines {lines})")
    return df


def next_ids(existing, prefix: str, n: int) -> list[str]:
    """``n`` new Ids ``<prefix>0001``... after the largest counter of that prefix among ``existing``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)")
    used = [int(m.group(1)) for i in existing if (m := pattern.fullmatch(str(i)))]
    start = max(used, default=0) + 1
    return [f"{prefix}{k:04d}" for k in range(start, start + n)]


def plan_decisions(catalog_dir: str | Path, decisions_csv: str | Path, photos_dir: str | Path, *,
                   boxes_csv: str | Path | None = None, prefix: str = DEFAULT_PREFIX) -> Plan:
    """Check a decisions file against the catalog and the batch and say what applying it would change."""
    from data.catalog import _odd_char

    catalog = load_catalog(catalog_dir, test_dir=photos_dir, need_test=True)
    decisions = read_decisions(decisions_csv)
    src = Path(decisions_csv)
    if _odd_char(prefix) is not None or prefix == "":
        raise InputError(None, f"new-Id prefix {prefix!r} is empty or has an odd character")
    batch, known = set(catalog.test_images), set(catalog.train["Id"]) - {NEW_WHALE}
    in_catalog = set(catalog.train["Image"])
    for i, name, decision in zip(decisions.index, decisions["Image"], decisions["Decision"], strict=True):
        line = f"line {i + 2}"
        if name in in_catalog:
            raise InputError(src, f"{line}: photo {name!r} is already in the catalog "
                                  f"({catalog.data_dir / 'train.csv'})")
        if name not in batch:
            raise InputError(src, f"{line}: photo {name!r} is not in this batch ({photos_dir}); "
                                  "is this the decisions file of another batch?")
        if decision not in known and decision not in REJECTED and decision != SKIP:
            raise InputError(src, f"{line}: Id {decision!r} of {name!r} does not exist in the catalog "
                                  f"(nor is it none, {NEW_WHALE} or {SKIP})")
    kept = decisions[decisions["Decision"] != SKIP]
    rejected = kept["Decision"].isin(REJECTED)
    ids = kept["Decision"].tolist()
    fresh = iter(next_ids(catalog.train["Id"], prefix, int(rejected.sum())))
    ids = [next(fresh) if r else d for d, r in zip(ids, rejected, strict=True)]
    added = pd.DataFrame({"Image": kept["Image"].tolist(), "Id": ids,
                          "kind": [NEW if r else CONFIRM for r in rejected],
                          "source": [str(catalog.test_path(n)) for n in kept["Image"]]})
    boxes = pd.DataFrame(columns=["Image", *BOX_COLUMNS])
    if boxes_csv is not None:
        found = read_boxes(boxes_csv)
        rows = [(n, *found[n]) for n in added["Image"] if n in found]
        boxes = pd.DataFrame(rows, columns=["Image", *BOX_COLUMNS])
    decided = set(decisions["Image"])
    return Plan(catalog.data_dir, added, decisions.loc[decisions["Decision"] == SKIP, "Image"].tolist(),
                sorted(batch - decided), boxes)


def _updated_tables(plan: Plan) -> dict[str, pd.DataFrame]:
    """The catalog's CSVs as they will be: train.csv, and boxes.csv / folds.csv where they change."""
    cat = plan.catalog
    train = pd.read_csv(cat / "train.csv", dtype=str, keep_default_na=False)
    tables = {"train.csv": pd.concat([train[["Image", "Id"]], plan.added[["Image", "Id"]]], ignore_index=True)}
    if not plan.boxes.empty:
        old = pd.read_csv(cat / "boxes.csv", dtype={"Image": str}) if (cat / "boxes.csv").is_file() else None
        tables["boxes.csv"] = plan.boxes if old is None else pd.concat([old, plan.boxes], ignore_index=True)
    if (cat / "folds.csv").is_file():
        folds = read_folds(cat / "folds.csv")
        extra = plan.added[["Image", "Id"]].assign(fold=TRAIN_ONLY)  # gallery photos: never a validation query
        tables["folds.csv"] = pd.concat([folds, extra], ignore_index=True)
    return tables


def apply_plan(plan: Plan, mode: str = "copy") -> Path:
    """Write the plan into the catalog (all or nothing, see the module's text); returns the backup folder.
    ``mode``: how a photo goes into ``train/``: copy, hardlink, symlink or auto (hardlink, else copy)."""
    cat = plan.catalog
    tables = _updated_tables(plan)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = cat / "backups" / stamp
    k = 1
    while backup.exists():
        backup, k = cat / "backups" / f"{stamp}-{k}", k + 1
    backup.mkdir(parents=True)
    for name in tables:
        if (cat / name).is_file():
            shutil.copy2(cat / name, backup / name)
    placed: list[Path] = []
    staged: list[Path] = []
    try:
        for image, source in zip(plan.added["Image"], plan.added["source"], strict=True):
            dst = cat / "train" / image
            if dst.exists():
                raise InputError(dst, "a photo of that name is already in train/ (not listed in train.csv)")
            place_file(Path(source), dst, mode)
            placed.append(dst)
        for name, df in tables.items():
            tmp = cat / f".{name}.new"
            write_csv(df, tmp)
            staged.append(tmp)
        for tmp in staged:
            os.replace(tmp, cat / tmp.name[1:-len(".new")])
    except BaseException:
        for name in tables:  # put the old files back where one was already replaced
            if (backup / name).is_file():
                shutil.copy2(backup / name, cat / name)
            elif name != "train.csv":
                (cat / name).unlink(missing_ok=True)
        for path in [*placed, *staged]:
            path.unlink(missing_ok=True)
        raise
    return backup
