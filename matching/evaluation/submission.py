"""Kaggle submission files (``Image,Id`` with up to five space-separated labels) and truth files."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from data.catalog import read_train_csv
from data.errors import InputError
from data.io import write_csv
from matching.metrics import map_at_5

TOP_K = 5


def write_submission(path: str | Path, query_names: Sequence[str], ranked: Sequence[Sequence[str]]) -> Path:
    """Write ``Image,Id`` rows (labels joined by spaces) atomically; returns ``path``."""
    if len(query_names) != len(ranked):
        raise ValueError(f"{len(query_names)} images but {len(ranked)} rankings")
    if len(set(query_names)) != len(query_names):
        raise ValueError("an image is listed twice")
    for name, labels in zip(query_names, ranked, strict=True):
        if not 1 <= len(labels) <= TOP_K:
            raise ValueError(f"image {name!r} has {len(labels)} labels (1 to {TOP_K} allowed)")
        bad = [lab for lab in labels if lab == "" or any(ch.isspace() or ch == "," for ch in lab)]
        if bad:
            raise ValueError(f"image {name!r}: label {bad[0]!r} is empty or has a space or comma")
    df = pd.DataFrame({"Image": list(query_names), "Id": [" ".join(labels) for labels in ranked]})
    return write_csv(df, path)


def read_submission(path: str | Path) -> dict[str, list[str]]:
    """Image -> its labels in order, from a submission file, validated."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", index_col=False)
    except pd.errors.EmptyDataError:
        raise InputError(path, "empty file (expected a header: Image,Id)") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning, UnicodeDecodeError) as err:
        raise InputError(path, f"not a readable CSV ({err})") from None
    for col in ("Image", "Id"):
        if col not in df.columns:
            raise InputError(path, f"missing column '{col}' (found: {', '.join(map(str, df.columns))})")
    if df.empty:
        raise InputError(path, "no rows")
    out: dict[str, list[str]] = {}
    for line, (image, ids) in enumerate(zip(df["Image"], df["Id"], strict=True), start=2):
        labels = ids.split()
        if image.strip() == "":
            raise InputError(path, f"line {line}: empty Image")
        if image in out:
            raise InputError(path, f"line {line}: image {image!r} listed twice")
        if not labels:
            raise InputError(path, f"line {line}: image {image!r} has no labels")
        if len(labels) > TOP_K:
            raise InputError(path, f"line {line}: image {image!r} has {len(labels)} labels (at most {TOP_K})")
        out[image] = labels
    return out


def read_truth(path: str | Path) -> dict[str, str]:
    """Image -> true Id from an ``Image,Id`` file (one label per image), validated like ``train.csv``."""
    df = read_train_csv(path)
    return dict(zip(df["Image"], df["Id"], strict=True))


def read_predictions(submission: str | Path, truth: str | Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``(truth, predictions)`` of a truth file and a submission file; every truth image must be predicted."""
    predicted = read_submission(submission)
    expected = read_truth(truth)
    missing = [name for name in expected if name not in predicted]
    if missing:
        raise InputError(submission, f"{len(missing)} image(s) of {truth} have no prediction "
                                     f"(e.g. {missing[0]!r})")
    return expected, predicted


def evaluate_submission(submission: str | Path, truth: str | Path) -> float:
    """MAP@5 of a submission file against a truth file (every truth image must be in the submission)."""
    expected, predicted = read_predictions(submission, truth)
    return map_at_5(list(expected.values()), [predicted[name] for name in expected])


def candidates_frame(query: Sequence[str], gallery: Sequence[str], scores: np.ndarray,
                     gallery_labels: Sequence[str], ranked: Sequence[Sequence[str]], threshold: float
                     ) -> pd.DataFrame:
    """One row per query and ranked label (for import into a catalog tool): ``Image,rank,Id,score,photo``.
    ``score``: the label's best pair score for the query (``new_whale``: the threshold it was ranked by);
    ``photo``: the catalog photo of that best score (empty for ``new_whale``)."""
    scores = np.asarray(scores)
    gallery = np.asarray(gallery, dtype=object)
    by_label: dict[str, np.ndarray] = {}
    for j, label in enumerate(gallery_labels):
        by_label.setdefault(label, []).append(j)
    by_label = {k: np.asarray(v) for k, v in by_label.items()}
    rows = []
    for i, (name, labels) in enumerate(zip(query, ranked, strict=True)):
        for rank, label in enumerate(labels, start=1):
            cols = by_label.get(label)
            if cols is None:  # new_whale, or a label with no catalog photo
                rows.append((name, rank, label, round(float(threshold), 6), ""))
                continue
            best = cols[int(np.argmax(scores[i, cols]))]
            rows.append((name, rank, label, round(float(scores[i, best]), 6), gallery[best]))
    return pd.DataFrame(rows, columns=["Image", "rank", "Id", "score", "photo"])
