"""Build ``<work-dir>/report/index.html`` from the work folder and the catalog (see :mod:`matching.review.report`)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from data.catalog import NEW_WHALE, load_catalog
from data.io import atomic_path
from matching.evaluation.submission import read_submission, read_truth
from matching.metrics import map_at_5
from matching.review.matches import local_member, match_lines
from matching.review.page import render_page
from matching.review.plots import plot_curves, plot_histograms, read_curves
from matching.review.report import build_rows, labels_for, load_blend, page_data, score_histogram
from matching.review.thumbs import make_thumbnails


@dataclass
class ReportResult:
    page: Path
    queries: int
    thumbnails: int
    with_truth: int
    map5: float | None
    curves: list[str]
    histogram_panels: list[str]
    notes: list[str] = field(default_factory=list)


def build_report(data_dir: str | Path, work_dir: str | Path, *, weights: Mapping[str, float] | None = None,
                 out_dir: Path | None = None, submission: Path | None = None, test_matrix: Path | None = None,
                 oof_matrix: Path | None = None, limit: int | None = None, embed: bool = False,
                 progress: bool = True, test_dir: Path | None = None, boxes_csv: Path | None = None,
                 truth_path: Path | None = None, runs_dir: Path | None = None, match_queries: int = 200
                 ) -> ReportResult:
    """Read the submission, the blended matrices, truth, metrics and photos; write the page (atomically).
    ``test_dir``, ``boxes_csv``: the query photos and boxes when they are not the catalog's own (a batch);
    ``truth_path``: the queries' truth (default ``<data_dir>/truth.csv`` when present); ``runs_dir``: the trained
    runs whose curves are drawn (default ``<work_dir>/runs``). ``match_queries``: for the first that many queries,
    the match lines of the local member that scored them (``m`` on the page), when one did; 0: none."""
    data_dir, work_dir = Path(data_dir), Path(work_dir)
    out_dir = out_dir or work_dir / "report"
    submission = submission or work_dir / "submission.csv"
    predicted = read_submission(submission)
    catalog = load_catalog(data_dir, need_test=False, check_files=False, test_dir=test_dir, boxes_csv=boxes_csv)
    labels = dict(zip(catalog.train["Image"], catalog.train["Id"], strict=True))
    saved = work_dir / "ensemble"  # the blends final_ensemble.py wrote, when there are any
    if test_matrix is None and (saved / "test.npz").is_file():
        test_matrix = saved / "test.npz"
        oof_matrix = oof_matrix or ((saved / "oof.npz") if (saved / "oof.npz").is_file() else None)
    blend = load_blend(work_dir / "scores", weights, test_matrix=test_matrix, oof_matrix=oof_matrix)
    notes = list(blend.notes)
    test = blend.test
    gallery_labels = labels_for(list(test.gallery), labels, test.name, "catalog")
    truth_path = truth_path or data_dir / "truth.csv"
    truth = read_truth(truth_path) if truth_path.is_file() else None
    rows = build_rows(test, gallery_labels, predicted, truth, source=submission, limit=limit)

    items: list[tuple[str, str]] = [("test", r.image) for r in rows]
    items += list(dict.fromkeys(("train", c.image) for r in rows for c in r.candidates if c.image))
    index = {item: i for i, item in enumerate(items)}
    paths = {"test": catalog.test_path, "train": catalog.train_path}
    sources = make_thumbnails(items, lambda kind, name: paths[kind](name), catalog.box, out_dir, embed=embed,
                              progress=progress)

    member = local_member(work_dir / "scores") if match_queries > 0 else None
    lines = {}
    if member is not None:
        pairs = [(r.image, c.image) for r in rows[:match_queries] for c in r.candidates if c.image]
        lines = match_lines(member, pairs, catalog.test_path, catalog.train_path, catalog.box)
        notes.append(f"match lines ({member['local']['extractor']}, {member['local']['matcher']}) for "
                     f"{min(len(rows), match_queries)} queries: press m")

    curves = read_curves(runs_dir or work_dir / "runs")
    curve_pngs = {m: plot_curves(curves, m) for m in dict.fromkeys(c.model for c in curves)}
    panels = []
    if blend.oof is not None:
        oof = blend.oof
        q_labels = labels_for(list(oof.query), labels, oof.name, "out-of-fold")
        g_labels = labels_for(list(oof.gallery), labels, oof.name, "catalog")
        panels.append(("out-of-fold (train.csv labels)", *score_histogram(oof, q_labels, g_labels)))
    if truth is not None:
        q_truth = [truth.get(str(q)) for q in test.query]
        if any(t is not None for t in q_truth):
            panels.append(("test (truth.csv)", *score_histogram(test, q_truth, gallery_labels)))

    known = [r for r in rows if r.truth is not None]
    map5 = map_at_5([r.truth for r in known], [[c.label for c in r.candidates] for r in known]) if known else None
    summary = [f"{sum(r.candidates[0].label == NEW_WHALE for r in rows)} new_whale at rank 1"]
    if map5 is not None:
        summary.append(f"MAP@5 {map5:.4f} over {len(known)} queries with truth")
        summary.append(f"{sum(r.truth_rank == 1 for r in known)} right at rank 1")
    if blend.weights:
        summary.append("blend " + ", ".join(f"{m} {w:.2f}" for m, w in blend.weights.items()))
    page_id = hashlib.sha1(str(work_dir.resolve()).encode()).hexdigest()[:12]
    page = render_page(title=f"Match review: {work_dir.name or work_dir}", queries=page_data(rows, index, lines),
                       thumbs=sources, summary=summary, curves=curve_pngs,
                       histogram=plot_histograms(panels) if panels else None, notes=notes, page_id=page_id)
    out = out_dir / "index.html"
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
        tmp.chmod(0o644)  # a page to open or serve, not a private temp file
    return ReportResult(out, len(rows), len(items), len(known), map5, list(curve_pngs), [p[0] for p in panels], notes)
