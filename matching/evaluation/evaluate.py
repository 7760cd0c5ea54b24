"""Scores of a submission against held-out truth: MAP@5, top-1 accuracy, ``new_whale`` at rank 1, counts.

``evaluate`` works on mappings already in memory; ``evaluate_files`` reads and validates a submission file
(``Image,Id`` with up to five space-separated labels) and a truth file (``Image,Id``), and raises one
:class:`~data.errors.InputError` naming the file for a missing file, a missing column, a duplicate row
or a truth image that the submission does not rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from data.catalog import NEW_WHALE
from matching.evaluation.submission import TOP_K, read_predictions
from matching.metrics import average_precision_at_5, map_at_5, truth_rank


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass(frozen=True)
class Evaluation:
    """Scores of one submission. Shares whose denominator is zero are ``None`` (printed as n/a)."""

    queries: int
    """Truth images scored (submission images not in the truth are ignored and counted in ``ignored``)."""
    ignored: int
    map5: float
    top1_correct: int
    truth_new_whale: int
    """Queries whose truth is ``new_whale``."""
    predicted_new_whale: int
    """Queries with ``new_whale`` at rank 1."""
    new_whale_hits: int
    """Queries that are ``new_whale`` and have it at rank 1."""
    found_at_rank: tuple[int, ...]
    """Queries whose true label is first found at rank 1, 2, ..., 5."""
    map5_known: float | None
    """MAP@5 over the queries of individuals in the catalog."""
    map5_new_whale: float | None
    """MAP@5 over the ``new_whale`` queries."""

    @property
    def top1(self) -> float:
        return self.top1_correct / self.queries

    @property
    def new_whale_precision(self) -> float | None:
        """Of the queries with ``new_whale`` at rank 1, the share truly ``new_whale``."""
        return _share(self.new_whale_hits, self.predicted_new_whale)

    @property
    def new_whale_recall(self) -> float | None:
        """Of the truly ``new_whale`` queries, the share with ``new_whale`` at rank 1."""
        return _share(self.new_whale_hits, self.truth_new_whale)

    @property
    def not_found(self) -> int:
        return self.queries - sum(self.found_at_rank)

    def as_dict(self) -> dict:
        """Every field and derived share, JSON-ready (``None`` for an undefined share)."""
        out = asdict(self)
        out["found_at_rank"] = list(self.found_at_rank)
        out.update(top1=self.top1, new_whale_precision=self.new_whale_precision,
                   new_whale_recall=self.new_whale_recall, not_found=self.not_found)
        return out

    def lines(self) -> list[str]:
        """A human summary, one item a line (without the final ``MAP@5`` line)."""

        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.6f}"

        known = self.queries - self.truth_new_whale
        ranks = ", ".join(f"{r}: {n}" for r, n in enumerate(self.found_at_rank, start=1))
        return [
            f"queries             {self.queries} ({known} of catalog individuals, {self.truth_new_whale} new_whale"
            f"{'' if not self.ignored else f'; {self.ignored} submission images not in the truth, ignored'})",
            f"top-1 accuracy      {self.top1:.6f} ({self.top1_correct} of {self.queries})",
            f"new_whale precision {fmt(self.new_whale_precision)} "
            f"({self.new_whale_hits} of {self.predicted_new_whale} predicted new_whale at rank 1)",
            f"new_whale recall    {fmt(self.new_whale_recall)} "
            f"({self.new_whale_hits} of {self.truth_new_whale} new_whale queries)",
            f"found at rank       {ranks}; not in the top {TOP_K}: {self.not_found}",
            f"MAP@5 known         {fmt(self.map5_known)} ({known} queries)",
            f"MAP@5 new_whale     {fmt(self.map5_new_whale)} ({self.truth_new_whale} queries)",
        ]


def evaluate(truth: Mapping[str, str], predicted: Mapping[str, Sequence[str]]) -> Evaluation:
    """Score ``predicted`` (image -> labels in rank order) against ``truth`` (image -> true Id).

    Every truth image must be in ``predicted`` (``KeyError`` otherwise); extra predicted images are ignored.
    """
    if not truth:
        raise ValueError("no queries to score")
    missing = [name for name in truth if name not in predicted]
    if missing:
        raise KeyError(f"{len(missing)} truth image(s) have no prediction (e.g. {missing[0]!r})")
    found = [0] * TOP_K
    ap_known: list[float] = []
    ap_new: list[float] = []
    top1 = truth_new = predicted_new = hits = 0
    for name, label in truth.items():
        labels = predicted[name]
        rank = truth_rank(label, labels) or None
        if rank is not None:
            found[rank - 1] += 1
        top1 += rank == 1
        is_new = label == NEW_WHALE
        says_new = bool(labels) and labels[0] == NEW_WHALE
        truth_new += is_new
        predicted_new += says_new
        hits += is_new and says_new
        (ap_new if is_new else ap_known).append(average_precision_at_5(label, labels))
    n = len(truth)
    return Evaluation(
        queries=n,
        ignored=sum(1 for name in predicted if name not in truth),
        map5=map_at_5(list(truth.values()), [predicted[name] for name in truth]),
        top1_correct=top1,
        truth_new_whale=truth_new,
        predicted_new_whale=predicted_new,
        new_whale_hits=hits,
        found_at_rank=tuple(found),
        map5_known=sum(ap_known) / len(ap_known) if ap_known else None,
        map5_new_whale=sum(ap_new) / len(ap_new) if ap_new else None,
    )


def evaluate_files(submission: str | Path, truth: str | Path) -> Evaluation:
    """:func:`evaluate` on a submission file and a truth file, both validated (one-line ``InputError``)."""
    return evaluate(*read_predictions(submission, truth))
