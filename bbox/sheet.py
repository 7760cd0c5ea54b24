"""A contact sheet PNG: photos in a grid with their predicted fluke boxes (and true boxes when known)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from bbox.data import load_photo  # noqa: E402
from bbox.metrics import iou  # noqa: E402
from data.io import atomic_path  # noqa: E402

Box = tuple[float, float, float, float]
PRED_COLOUR = "#ff3b30"
TRUE_COLOUR = "#34c759"


def pick_for_sheet(names: Sequence[str], count: int, missing: Sequence[str] = ()) -> list[str]:
    """Up to ``count`` names: the photos without a box first, then an even spread over the rest."""
    first = [n for n in names if n in set(missing)][:count]
    rest = [n for n in names if n not in set(first)]
    room = count - len(first)
    if room <= 0 or not rest:
        return first
    step = len(rest) / min(room, len(rest))
    return first + [rest[int(i * step)] for i in range(min(room, len(rest)))]


def contact_sheet(
    paths: Mapping[str, Path],
    predicted: Mapping[str, Box | None],
    out: str | Path,
    *,
    truth: Mapping[str, Box] | None = None,
    columns: int = 6,
    cell: float = 3.2,
    title: str | None = None,
    max_side: int = 480,
) -> Path:
    """Draw every photo of ``paths`` (name -> file) with its predicted box (red; "no box" when None) and its
    true box (green) when ``truth`` has one, the IoU in the caption; written atomically to ``out``."""
    names = list(paths)
    if not names:
        raise ValueError("no photos for the contact sheet")
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * cell, rows * cell * 0.75), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        image, scale, _ = load_photo(paths[name], max_side)
        ax.imshow(image)
        caption = name if len(name) <= 22 else name[:10] + ".." + name[-10:]
        true_box = truth.get(name) if truth else None
        for box, colour, style in ((true_box, TRUE_COLOUR, "--"), (predicted.get(name), PRED_COLOUR, "-")):
            if box is not None:
                x0, y0, x1, y1 = (v * scale for v in box)
                ax.add_patch(
                    Rectangle(
                        (x0, y0),
                        x1 - x0,
                        y1 - y0,
                        fill=False,
                        edgecolor=colour,
                        linewidth=1.6,
                        linestyle=style,
                    )
                )
        if predicted.get(name) is None:
            caption += "\nno box"
        elif true_box is not None:
            caption += f"\nIoU {iou(predicted[name], true_box):.2f}"
        ax.set_title(caption, fontsize=7)
    legend = "red: predicted box" + (", green dashed: true box" if truth else "")
    fig.suptitle((title + "\n" if title else "") + legend, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out
