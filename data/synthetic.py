"""The synthetic humpback-fluke catalog: the project's embedded default data set.

Layout written (the ``--data-dir`` layout of DESIGN.md): ``train.csv`` (Image,Id with ``new_whale``
rows), ``train/``, ``test/``, ``truth.csv`` (Image,Id of every test photo), ``truth_boxes.csv``
(Image,x0,y0,x1,y1 of every photo), ``synthetic.json`` (the settings) and ``contact_sheet.png``.
Every individual and every photo has its own random generator derived from the master seed, so the
same settings give byte-identical files.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from data.catalog import NEW_WHALE
from data.errors import InputError
from data.io import staged_dir
from data.synth_fluke import make_fluke
from data.synth_photo import encode_jpeg, render_photo

_STREAM_PLAN, _STREAM_LOOK, _STREAM_PHOTO = 0, 1, 2
_TAIL_SIGMA = 1.2  # log-normal spread of photos per whale, fitted to the 2019 Kaggle catalog
# Test photos of known whales are drawn with weight (train count) ** _TEST_POWER: well-photographed
# whales come back more often, but less than in proportion, so that "new_whale then the four most
# photographed whales" stays a weak answer in a catalog of only ~100 whales.
_TEST_POWER = 0.75


@dataclass(frozen=True)
class SynthConfig:
    """Size, look and difficulty of a synthetic catalog."""

    seed: int = 0
    individuals: int = 120  # known individuals: those with an Id in train.csv
    mean_photos: float = 3.8  # mean train photos per known individual (long tail)
    max_photos: int = 16  # most train photos of one individual
    train_new_share: float = 0.38  # share of train.csv rows that are new_whale
    test_photos: int = 200
    test_new_share: float = 0.25  # share of test photos showing individuals absent from train
    width: int = 320
    height: int = 200
    difficulty: float = 1.0  # scales pose, lighting, occlusion, blur, noise and JPEG loss

    def check(self) -> None:
        """Raise ``ValueError`` on settings that cannot make a catalog."""
        if self.individuals < 1:
            raise ValueError("individuals must be at least 1")
        if not 1 <= self.mean_photos <= self.max_photos:
            raise ValueError("need 1 <= mean_photos <= max_photos")
        if not (0 <= self.train_new_share < 1 and 0 <= self.test_new_share <= 1):
            raise ValueError("new_whale shares must be in [0, 1) for train and [0, 1] for test")
        if self.test_photos < 1:
            raise ValueError("test_photos must be at least 1")
        if self.width < 64 or self.height < 48:
            raise ValueError("photos must be at least 64 x 48 pixels")
        if self.difficulty < 0:
            raise ValueError("difficulty must be >= 0")


@dataclass(frozen=True)
class Photo:
    image: str  # file name
    split: str  # "train" or "test"
    individual: int  # index of the individual (its look seed)
    label: str  # Id as written: the whale Id, or new_whale


@dataclass
class CatalogPlan:
    """Who is photographed how often, with which names: everything but the pixels."""

    ids: list[str]  # Id of each individual (new ones too, never written for them)
    photos: list[Photo] = field(default_factory=list)

    def split(self, name: str) -> list[Photo]:
        return [p for p in self.photos if p.split == name]


def long_tail_counts(rng: np.random.Generator, n: int, mean: float, maximum: int) -> np.ndarray:
    """Photos per individual: a discretised log-normal (most have 1-2, a few many), in [1, maximum]."""
    mu = math.log(max(mean - 0.5, 0.5)) - _TAIL_SIGMA**2 / 2
    counts = np.ceil(np.exp(rng.normal(mu, _TAIL_SIGMA, n)))
    return np.clip(counts, 1, maximum).astype(np.int64)


def _unique_hex(rng: np.random.Generator, n: int, digits: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        name = f"{int(rng.integers(0, 16**digits)):0{digits}x}"
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def plan_catalog(cfg: SynthConfig) -> CatalogPlan:
    """Individuals, their photo counts in train and test, Ids (``w_`` + 7 hex) and names (9 hex + .jpg)."""
    cfg.check()
    rng = np.random.default_rng([cfg.seed, _STREAM_PLAN])
    counts = long_tail_counts(rng, cfg.individuals, cfg.mean_photos, cfg.max_photos)
    n_train_known = int(counts.sum())
    n_train_new = round(cfg.train_new_share / (1 - cfg.train_new_share) * n_train_known)
    n_test_new = round(cfg.test_photos * cfg.test_new_share)
    n_test_known = cfg.test_photos - n_test_new
    weight = counts.astype(np.float64) ** _TEST_POWER
    test_known = np.bincount(rng.choice(cfg.individuals, size=n_test_known, p=weight / weight.sum()),
                             minlength=cfg.individuals)
    n_total = cfg.individuals + n_train_new + n_test_new
    ids = ["w_" + h for h in _unique_hex(rng, n_total, 7, set())]
    entries: list[tuple[str, int, str]] = []
    for k in range(cfg.individuals):
        entries += [("train", k, ids[k])] * int(counts[k]) + [("test", k, ids[k])] * int(test_known[k])
    for k in range(cfg.individuals, cfg.individuals + n_train_new):
        entries.append(("train", k, NEW_WHALE))
    for k in range(cfg.individuals + n_train_new, n_total):
        entries.append(("test", k, NEW_WHALE))
    names = _unique_hex(rng, len(entries), 9, set())
    photos = [Photo(name + ".jpg", split, k, label) for name, (split, k, label) in zip(names, entries)]
    return CatalogPlan(ids, photos)


def render_individual(cfg: SynthConfig, individual: int, photo_names: Iterable[str]
                      ) -> list[tuple[str, bytes, tuple[int, int, int, int]]]:
    """JPEG bytes and true box of each named photo of one individual (seeded by individual and name)."""
    look = make_fluke(np.random.default_rng([cfg.seed, _STREAM_LOOK, individual]), max(128, cfg.width))
    out = []
    for name in photo_names:
        rng = np.random.default_rng([cfg.seed, _STREAM_PHOTO, individual, int(name.split(".")[0], 16)])
        rgb, box = render_photo(look, rng, cfg.width, cfg.height, cfg.difficulty)
        out.append((name, encode_jpeg(rgb, rng, cfg.difficulty), box))
    return out


@dataclass(frozen=True)
class CatalogSummary:
    """What :func:`write_catalog` wrote."""

    out: Path
    known_individuals: int
    train_photos: int
    train_new_whale: int
    test_photos: int
    test_new_whale: int
    photos_per_whale: dict[int, int]  # train photos -> number of known individuals with that many
    seconds: float


def _generate_into(folder: Path, cfg: SynthConfig, progress: bool) -> tuple[CatalogPlan, pd.DataFrame]:
    plan = plan_catalog(cfg)
    (folder / "train").mkdir()
    (folder / "test").mkdir()
    by_individual: dict[int, list[Photo]] = {}
    for p in plan.photos:
        by_individual.setdefault(p.individual, []).append(p)
    boxes = []
    with tqdm(total=len(plan.photos), desc="synthetic photos", unit="photo", mininterval=0.5,
              disable=not progress) as bar:
        for k in sorted(by_individual):
            split_of = {p.image: p.split for p in by_individual[k]}
            for name, jpeg, box in render_individual(cfg, k, split_of):
                (folder / split_of[name] / name).write_bytes(jpeg)
                boxes.append((name, *box))
                bar.update()
    for split, csv in (("train", "train.csv"), ("test", "truth.csv")):
        rows = sorted((p.image, p.label) for p in plan.split(split))
        pd.DataFrame(rows, columns=["Image", "Id"]).to_csv(folder / csv, index=False)
    box_df = pd.DataFrame(sorted(boxes), columns=["Image", "x0", "y0", "x1", "y1"])
    box_df.to_csv(folder / "truth_boxes.csv", index=False)
    (folder / "synthetic.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    write_contact_sheet(folder, plan, box_df, folder / "contact_sheet.png")
    return plan, box_df


def write_contact_sheet(folder: Path, plan: CatalogPlan, boxes: pd.DataFrame, path: Path,
                        whales: int = 6, per_whale: int = 6) -> None:
    """A PNG grid: one row per well-photographed individual, its photos with their true boxes in green."""
    photos: dict[int, list[Photo]] = {}
    for p in plan.photos:
        if p.label != NEW_WHALE:
            photos.setdefault(p.individual, []).append(p)
    chosen = sorted(photos, key=lambda k: (-len(photos[k]), k))[:whales]
    box_of = boxes.set_index("Image")
    rows = []
    for k in chosen:
        tiles = []
        for p in sorted(photos[k], key=lambda p: p.image)[:per_whale]:
            img = cv2.imread(str(folder / p.split / p.image), cv2.IMREAD_COLOR)
            x0, y0, x1, y1 = (int(v) for v in box_of.loc[p.image, ["x0", "y0", "x1", "y1"]])
            cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), (0, 255, 0), 1)
            cv2.putText(img, f"{p.label} {p.split}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1)
            tiles.append(img)
        tiles += [np.zeros_like(tiles[0])] * (per_whale - len(tiles))
        rows.append(np.hstack(tiles))
    if rows:
        cv2.imwrite(str(path), np.vstack(rows))


def _is_replaceable(out: Path) -> bool:
    return out.is_dir() and (not any(out.iterdir()) or (out / "train.csv").is_file())


def write_catalog(out: str | Path, cfg: SynthConfig, *, force: bool = False,
                  progress: bool = True) -> CatalogSummary:
    """Generate the catalog into ``<out>.partial-*`` beside ``out`` and rename it into place.

    An existing ``out`` is refused unless ``force`` is set, and even then only an empty folder or
    one holding a ``train.csv`` (an earlier catalog) is replaced. An error or Ctrl-C removes the
    partial folder; a process killed outright may leave it behind, but never a half-written ``out``.
    """
    cfg.check()
    out = Path(out)
    if out.exists() and not force:
        raise InputError(out, "already exists; use --force to replace it")
    if out.exists() and not _is_replaceable(out):
        raise InputError(out, "exists and is not a catalog folder (no train.csv); refusing to replace it")
    start = time.perf_counter()
    with staged_dir(out) as tmp:
        plan, _ = _generate_into(tmp, cfg, progress)
    train = plan.split("train")
    test = plan.split("test")
    known = pd.Series([p.label for p in train if p.label != NEW_WHALE]).value_counts()
    return CatalogSummary(
        out=out,
        known_individuals=int(len(known)),
        train_photos=len(train),
        train_new_whale=sum(p.label == NEW_WHALE for p in train),
        test_photos=len(test),
        test_new_whale=sum(p.label == NEW_WHALE for p in test),
        photos_per_whale={int(k): int(v) for k, v in known.value_counts().sort_index().items()},
        seconds=time.perf_counter() - start,
    )
