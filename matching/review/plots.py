"""Plots of the review page (matplotlib, Agg backend, PNG bytes): training curves and score distributions."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from data.errors import InputError  # noqa: E402

METRIC_COLUMNS = ("global_epoch", "loss", "val_map5")
_FOLD = re.compile(r"^fold(\d+)$")
_SIZE = re.compile(r"^(\d+)px$")


@dataclass(frozen=True)
class Curve:
    model: str
    fold: int
    size: int
    frame: pd.DataFrame  # global_epoch, loss, val_map5 (NaN between validations)


def read_curves(runs_dir: str | Path) -> list[Curve]:
    """Every ``<runs>/<model>/fold<k>/<size>px/metrics.csv``, sorted by model, fold and size."""
    curves = []
    for path in sorted(Path(runs_dir).glob("*/fold*/*px/metrics.csv")):
        fold, size = _FOLD.match(path.parent.parent.name), _SIZE.match(path.parent.name)
        if fold is None or size is None:
            continue
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise InputError(path, f"not a readable CSV ({err})") from None
        missing = [c for c in METRIC_COLUMNS if c not in frame.columns]
        if missing:
            raise InputError(path, f"missing column(s) {', '.join(missing)} (found: {', '.join(frame.columns)})")
        values = frame[list(METRIC_COLUMNS)].apply(pd.to_numeric, errors="coerce")
        trained = values["global_epoch"] > 0  # row 0: the model scored before training (no loss)
        if values["global_epoch"].isna().any() or values.loc[trained, "loss"].isna().any():
            raise InputError(path, "global_epoch must be a number on every row, loss on every trained epoch")
        curves.append(Curve(path.parent.parent.parent.name, int(fold.group(1)), int(size.group(1)), values))
    return sorted(curves, key=lambda c: (c.model, c.fold, c.size))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def plot_curves(curves: Sequence[Curve], model: str) -> bytes:
    """Loss and validation MAP@5 against the global epoch, one colour per fold, stage sizes marked."""
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 3.2))
    mine = [c for c in curves if c.model == model]
    folds = sorted({c.fold for c in mine})
    colours = {f: plt.cm.tab10(i % 10) for i, f in enumerate(folds)}
    starts: dict[int, float] = {}
    for c in mine:
        label = f"fold {c.fold}" if c.size == min(x.size for x in mine if x.fold == c.fold) else None
        trained = c.frame.dropna(subset=["loss"])
        ax_loss.plot(trained["global_epoch"], trained["loss"], color=colours[c.fold], label=label)
        val = c.frame.dropna(subset=["val_map5"])
        ax_map.plot(val["global_epoch"], val["val_map5"], "o-", color=colours[c.fold], ms=3)
        first = float(c.frame["global_epoch"].min()) if len(c.frame) else 0.0
        starts[c.size] = min(starts.get(c.size, first), first)
    for size, x in starts.items():
        for ax in (ax_loss, ax_map):
            ax.axvline(x - 0.5, color="grey", lw=0.6, ls="--")
        ax_loss.annotate(f"{size}px", (x - 0.5, 0.97), xycoords=("data", "axes fraction"), xytext=(3, 0),
                         textcoords="offset points", fontsize=7, va="top", color="grey")
    ax_loss.set(title=f"{model}: training loss", xlabel="epoch", ylabel="BCE loss")
    ax_map.set(title=f"{model}: validation MAP@5", xlabel="epoch", ylabel="MAP@5", ylim=(0, 1))
    if folds:
        ax_loss.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def plot_histograms(panels: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> bytes:
    """One panel per ``(title, edges, match counts, non-match counts)``: the share of each kind per bin."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.2), squeeze=False)
    for ax, (title, edges, match, non) in zip(axes[0], panels):
        centres = (edges[:-1] + edges[1:]) / 2
        width = edges[1] - edges[0]
        for counts, colour, name in ((non, "tab:red", "non-matches"), (match, "tab:green", "matches")):
            share = counts / max(int(counts.sum()), 1)
            ax.bar(centres, share, width=width, color=colour, alpha=0.5, label=f"{name} ({int(counts.sum()):,})")
        ax.set(title=title, xlabel="pair score", ylabel="share of pairs", xlim=(0, 1))
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)
