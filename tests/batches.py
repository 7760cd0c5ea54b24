"""Helpers of the season tests: a batch folder cut from the tiny catalog's query photos, and a ``place_file``
that fails part-way."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from data.io import write_csv


def copy_batch(tiny_catalog: Path, folder: Path, names: list[str], boxes_csv: Path | None = None) -> Path | None:
    """Copy the query photos ``names`` into ``folder``; with ``boxes_csv``, write their boxes there too."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(tiny_catalog / "test" / n, folder / n)
    if boxes_csv is None:
        return None
    boxes = pd.read_csv(tiny_catalog / "boxes.csv")
    return write_csv(boxes[boxes["Image"].isin(set(names))], boxes_csv)


def failing_at(real, call: int):
    """``real`` (a ``place_file``) that raises ``OSError("disk full")`` on its ``call``-th call."""
    calls = []

    def place(src, dst, mode):
        calls.append(dst)
        if len(calls) == call:
            raise OSError("disk full")
        return real(src, dst, mode)

    return place
