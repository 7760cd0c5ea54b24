"""N-way one-shot accuracy of trained runs on the tasks of a one-shot protocol (``data.protocol.write_one_shot``).

Every task folder is a small data folder (one photo per class in ``train/``, one query per class in
``test/``, ``truth.csv``). Each task is scored through the ordinary path for trained models on a new
catalog (:func:`matching.runs.pipeline.score_run` per run, the fold means of
:func:`matching.runs.pipeline.combine_folds`, then the mean over models), in a work folder of its own so that
the feature caches of different tasks never mix. The answer to a query is the argmax over the task's
catalog (``new_whale`` is never an answer): the first label of the ranking by best score, ties going to
the alphabetically first label, which is also the first label of the task's ``submission.csv``.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from data.catalog import load_catalog
from data.errors import InputError
from data.io import write_csv
from matching.evaluation.submission import read_truth, write_submission
from matching.matrix import ScoreMatrix, average
from matching.ranking.rank import rank_queries
from matching.runs.pipeline import combine_folds, score_run
from matching.runs.run import Run

Z_95 = 1.959963984540054
RESULT_COLUMNS = ("task", "groups", "queries", "correct", "accuracy", "ci_low", "ci_high")


def wilson_interval(correct: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95 % by default); (0, 1) when ``total`` is 0."""
    if total <= 0:
        return 0.0, 1.0
    p = correct / total
    denom = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class TaskResult:
    """Top-1 answers of one task: ``correct`` of ``queries`` right."""

    task: str
    groups: str
    queries: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.queries if self.queries else 0.0

    def row(self) -> dict:
        low, high = wilson_interval(self.correct, self.queries)
        return {"task": self.task, "groups": self.groups, "queries": self.queries, "correct": self.correct,
                "accuracy": self.accuracy, "ci_low": low, "ci_high": high}


def rank_task(matrix: ScoreMatrix, labels: Mapping[str, str]) -> list[list[str]]:
    """Five labels per query row, by best catalog score (no ``new_whale``); ``labels``: catalog Image -> Id."""
    gallery_labels = [labels[str(name)] for name in matrix.gallery]
    return rank_queries(matrix.scores, gallery_labels, None, mode="max")


def task_result(task: str, groups: str, matrix: ScoreMatrix, labels: Mapping[str, str],
                truth: Mapping[str, str]) -> tuple[TaskResult, list[list[str]]]:
    """The top-1 result of one task's score matrix and its ranked labels (rows in ``matrix.query`` order)."""
    missing = sorted(set(truth) - {str(q) for q in matrix.query})
    if missing:
        raise InputError(None, f"task {task}: query {missing[0]!r} of truth.csv has no score row")
    ranked = rank_task(matrix, labels)
    correct = sum(truth[str(q)] == r[0] for q, r in zip(matrix.query, ranked, strict=True) if str(q) in truth)
    return TaskResult(task, groups, len(truth), int(correct)), ranked


@dataclass(frozen=True)
class OneShotReport:
    """Per-task results and their pooled accuracy (every query of every task counted once)."""

    results: list[TaskResult]
    csv: Path

    @property
    def queries(self) -> int:
        return sum(r.queries for r in self.results)

    @property
    def correct(self) -> int:
        return sum(r.correct for r in self.results)

    @property
    def accuracy(self) -> float:
        return self.correct / self.queries if self.queries else 0.0

    def lines(self) -> list[str]:
        low, high = wilson_interval(self.correct, self.queries)
        accs = [r.accuracy for r in self.results]
        return [
            f"{len(self.results)} task(s), {self.queries} queries: {self.correct} right at rank 1",
            f"  per task: min {min(accs):.3f}, median {float(np.median(accs)):.3f}, max {max(accs):.3f}",
            f"  95% binomial interval (Wilson) {low:.4f} to {high:.4f}",
            f"wrote {self.csv}",
            f"one-shot accuracy {self.accuracy:.6f}",
        ]


def result_frame(results: Sequence[TaskResult]) -> pd.DataFrame:
    """``one_shot.csv``: one row per task, then the pooled row ``all``."""
    rows = [r.row() for r in results]
    pooled = TaskResult("all", "", sum(r.queries for r in results), sum(r.correct for r in results))
    return pd.DataFrame([*rows, pooled.row()], columns=list(RESULT_COLUMNS))


def read_tasks(protocol: Path) -> list[dict]:
    """The tasks listed by ``protocol.json`` of a one-shot protocol folder (``name``, ``groups``)."""
    path = protocol / "protocol.json"
    if not path.is_file():
        raise InputError(path, "file not found (make the folder with make_protocol.py --one-shot N)")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, f"not readable JSON ({err})") from None
    if record.get("mode") != "one_shot" or not record.get("tasks"):
        raise InputError(path, "not a one-shot protocol (make it with make_protocol.py --one-shot N)")
    for task in record["tasks"]:
        if not (protocol / task["name"] / "truth.csv").is_file():
            raise InputError(protocol / task["name"], "task folder without truth.csv")
    return record["tasks"]


def score_task(task_dir: Path, runs: Sequence[Run], work: Path, *, device: torch.device, budget_mb: float = 512,
               batch: int = 64) -> ScoreMatrix:
    """The query x one-shot catalog matrix of one task: every run scored by :func:`score_run` (features cached
    under ``work/features``), folds averaged per model, then models averaged."""
    catalog = load_catalog(task_dir, need_test=True)
    shutil.rmtree(work / "scores", ignore_errors=True)  # no fold file of an earlier, other set of runs
    for run in runs:
        score_run(run, catalog, None, work / "scores" / run.model, work / "features" / run.model / f"fold{run.fold}",
                  device=device, budget_mb=budget_mb, batch=batch)
    models = sorted({run.model for run in runs})
    for model in models:
        combine_folds(work / "scores" / model)
    return average([work / "scores" / model / "test.npz" for model in models])


def run_one_shot(protocol: Path, runs: Sequence[Run], work_dir: Path, *, device: torch.device,
                 budget_mb: float = 512, batch: int = 64, progress: bool = True) -> OneShotReport:
    """Score every task of ``protocol`` with ``runs``; writes ``<work_dir>/<task>/submission.csv`` (five labels
    per query) and ``<work_dir>/one_shot.csv``."""
    if not runs:
        raise InputError(None, "no trained runs to score the tasks with")
    protocol, work_dir = Path(protocol), Path(work_dir)
    tasks = read_tasks(protocol)
    results = []
    bar: Iterable[dict] = tqdm(tasks, desc="one-shot tasks", unit="task", disable=not progress)
    for task in bar:
        task_dir, work = protocol / task["name"], work_dir / task["name"]
        matrix = score_task(task_dir, runs, work, device=device, budget_mb=budget_mb, batch=batch)
        labels = read_truth(task_dir / "train.csv")
        result, ranked = task_result(task["name"], " ".join(task.get("groups", [])), matrix, labels,
                                     read_truth(task_dir / "truth.csv"))
        write_submission(work / "submission.csv", [str(q) for q in matrix.query], ranked)
        results.append(result)
    csv = write_csv(result_frame(results), work_dir / "one_shot.csv")
    return OneShotReport(results, csv)
