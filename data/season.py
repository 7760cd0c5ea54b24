"""A simulated field season (bench/season.py): a catalog split into an initial catalog and batches of new photos,
the truth of each batch against the catalog as it has grown, and a person's decisions played from that truth.

The photos of a labelled catalog are dealt out at random: each goes to the initial catalog with probability
``initial_share``, else to one of the batches; an individual whose photos all went to batches is new when it
first appears. ``new_whale`` photos stay in the initial catalog as they are.

As the season goes on the catalog's Ids are no longer the true names: an individual first seen in a batch gets a
new Id (``auto_0001``...), and a person's mistakes may split an individual over two Ids or merge two. The truth
of a batch is therefore read off the catalog as it is then: the Id that holds most of that individual's photos,
or ``new_whale`` when none does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from data.catalog import NEW_WHALE, read_train_csv
from data.decisions import REJECTED, SKIP
from data.io import place_file, write_csv


def split_season(train: pd.DataFrame, n_batches: int = 3, initial_share: float = 0.5, seed: int = 0
                 ) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """(initial catalog rows, the rows of each batch), every row with its true Id."""
    if n_batches < 1 or not 0 < initial_share < 1:
        raise ValueError("n_batches must be at least 1 and initial_share in (0, 1)")
    rng = np.random.default_rng(seed)
    known = (train["Id"] != NEW_WHALE).to_numpy()
    to_initial = ~known | (rng.random(len(train)) < initial_share)
    batch_of = rng.integers(0, n_batches, len(train))
    batches = [train[~to_initial & (batch_of == k)].reset_index(drop=True) for k in range(n_batches)]
    return train[to_initial].reset_index(drop=True), batches


def write_season(data_dir: str | Path, out: str | Path, n_batches: int = 3, initial_share: float = 0.5,
                 seed: int = 0, link: str = "auto") -> dict[str, Path]:
    """Write ``out/catalog/{train.csv,train/}`` (with the catalog's boxes), ``out/batch<k>/`` (the photos of each
    batch) and ``out/season_truth.csv`` (Image,Id: the true individual of every photo)."""
    data_dir, out = Path(data_dir), Path(out)
    train = read_train_csv(data_dir / "train.csv")
    initial, batches = split_season(train, n_batches, initial_share, seed)
    catalog = out / "catalog"
    for name in initial["Image"]:
        place_file(data_dir / "train" / name, catalog / "train" / name, link)
    write_csv(initial, catalog / "train.csv")
    if (data_dir / "boxes.csv").is_file():
        boxes = pd.read_csv(data_dir / "boxes.csv", dtype={"Image": str})
        write_csv(boxes[boxes["Image"].isin(set(initial["Image"]))], catalog / "boxes.csv")
    written = {"catalog": catalog}
    for k, rows in enumerate(batches, start=1):
        for name in rows["Image"]:
            place_file(data_dir / "train" / name, out / f"batch{k}" / name, link)
        written[f"batch{k}"] = out / f"batch{k}"
    written["truth"] = write_csv(train, out / "season_truth.csv")
    return written


def batch_truth(catalog: pd.DataFrame, true_id: Mapping[str, str], images: Sequence[str]) -> pd.DataFrame:
    """Image,Id of a batch against the catalog as it is now: the Id under which the catalog holds most photos of the
    image's individual (``true_id``: every photo's true individual), or ``new_whale``."""
    held = catalog[catalog["Id"] != NEW_WHALE].assign(individual=lambda d: d["Image"].map(true_id))
    counts = held.groupby(["individual", "Id"]).size().reset_index(name="n")
    counts = counts.sort_values(["individual", "n", "Id"], ascending=[True, False, True])
    best = counts.drop_duplicates("individual").set_index("individual")["Id"]
    return pd.DataFrame({"Image": list(images), "Id": [best.get(true_id[n], NEW_WHALE) for n in images]})


def simulate_decisions(candidates: pd.DataFrame, truth: Mapping[str, str], error_rate: float = 0.05,
                       skip_rate: float = 0.02, seed: int = 0) -> pd.DataFrame:
    """The decisions a person makes on the five candidates of each query (candidates.csv: Image, rank, Id): the
    right candidate when it is among them, else none (a new individual, or one the five missed). With probability
    ``error_rate`` a mistake instead: another candidate confirmed (where the right one was shown, half of the
    mistakes are a none instead), and with ``skip_rate`` a skip."""
    rng = np.random.default_rng(seed)
    rows = []
    for image, group in candidates.sort_values(["Image", "rank"]).groupby("Image", sort=True):
        shown = [i for i in group["Id"] if i != NEW_WHALE]
        right = truth[image]
        decision = right if right in shown else REJECTED[0]
        roll = rng.random()
        if roll < skip_rate:
            decision = SKIP
        elif roll < skip_rate + error_rate:
            wrong = [i for i in shown if i != right]
            if wrong and (decision == REJECTED[0] or rng.random() < 0.5):
                decision = str(rng.choice(wrong))
            else:
                decision = REJECTED[0] if decision != REJECTED[0] else decision
        rows.append((image, decision))
    return pd.DataFrame(rows, columns=["Image", "Decision"])
