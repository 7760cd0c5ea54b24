"""The whole chain of one config on one catalog, as steps of the project's own scripts (scripts/run_chain.py).

A chain config is a Siamese config (``base:`` inheritance as usual) with two top-level keys of its own:
``folds`` (the validation folds to train, e.g. ``[0, 1]``) and ``n_folds`` (``make_folds.py --n-folds``,
default 4). Steps: folds, one training run per fold (``--resume``), score matrices, ensemble, evaluation
(when the data dir has ``truth.csv``) and the frozen-branch cosine baseline at the size of the last stage.
A step whose outputs exist is reused, except the cheap ones that read the others (ensemble, evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from data.errors import InputError
from matching.runs.keypoint_scores import keypoint_scores_done

DEFAULT_N_FOLDS = 4


@dataclass(frozen=True)
class Step:
    name: str
    script: str  # file name under scripts/
    args: list[str]
    done: Callable[[], bool] = field(default=lambda: False, compare=False)


def chain_folds(cfg: Mapping, source: str | Path | None = None) -> tuple[list[int], int]:
    """(folds to train, n_folds) from the config's top-level ``folds`` and ``n_folds``; bad values raise
    :class:`InputError` naming ``source``."""
    n_folds = cfg.get("n_folds", DEFAULT_N_FOLDS)
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise InputError(source, f"n_folds must be an integer of at least 2, not {n_folds!r}")
    folds = cfg.get("folds")
    if not isinstance(folds, list) or not folds:
        raise InputError(source, f"'folds:' must be a non-empty list of fold numbers (e.g. [0, 1]), not {folds!r}")
    for k in folds:
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n_folds:
            raise InputError(source, f"'folds:' entry {k!r} is not a fold number in 0..{n_folds - 1}")
    if len(set(folds)) != len(folds):
        raise InputError(source, f"'folds:' lists a fold twice: {folds}")
    return list(folds), n_folds


def last_stage_size(cfg: Mapping, source: str | Path | None = None) -> int:
    from siamese.schedule import parse_schedule

    return parse_schedule(cfg.get("train", {}).get("stages"), str(source or "train.stages"))[-1].size


def folds_file_matches(path: Path, n_folds: int) -> bool:
    """Whether ``folds.csv`` exists and was made with ``n_folds`` folds (its largest fold is n_folds - 1)."""
    if not path.is_file():
        return False
    folds = pd.read_csv(path, usecols=["fold"])["fold"]
    return int(folds.max()) == n_folds - 1


def build_steps(config: Path, cfg: Mapping, data: Path, work: Path) -> list[Step]:
    """The steps of the chain in order, each a script with its arguments and a test of its outputs."""
    folds, n_folds = chain_folds(cfg, config)
    model = cfg["model"]["name"]
    size = last_stage_size(cfg, config)
    common = ["--data-dir", str(data), "--work-dir", str(work)]
    scores = work / "scores" / model
    steps = [Step("folds", "make_folds.py", ["--data-dir", str(data), "--n-folds", str(n_folds)],
                  lambda: folds_file_matches(data / "folds.csv", n_folds))]
    for k in folds:
        steps.append(Step(f"train fold {k}", "train_fold.py",
                          [str(k), *common, "--config", str(config), "--resume"],
                          lambda k=k: _run_complete(work / "runs" / model / f"fold{k}")))
    steps.append(Step("score matrices", "score_matrix.py", [*common, "--models", model],
                      lambda: all((scores / f"fold{k}_{p}.npz").is_file() for k in folds for p in ("test", "oof"))
                      and (scores / "test.npz").is_file() and keypoint_scores_done(cfg, work)))
    steps.append(Step("ensemble", "final_ensemble.py", common))
    if (data / "truth.csv").is_file():
        steps.append(Step("evaluation", "evaluate.py",
                          ["--submission", str(work / "submission.csv"), "--truth", str(data / "truth.csv"),
                           "--json", str(work / "evaluation.json")]))
    baseline_json = work / "baseline_lite0.json"
    steps.append(Step("frozen-Lite0 baseline", "baseline.py",
                      ["--data-dir", str(data), "--features", "lite0", "--size", str(size),
                       "--reuse", str(work / "features" / model), "--json", str(baseline_json)],
                      lambda: baseline_json.is_file()))
    return steps


def _run_complete(run_dir: Path) -> bool:
    from siamese.train import run_complete

    return run_complete(run_dir)


def fold_validation(work: Path, model: str, folds: list[int]) -> dict[int, float]:
    """Each trained fold's best training-time validation MAP@5 (last stage's metrics.csv)."""
    out = {}
    for k in folds:
        found = sorted((work / "runs" / model / f"fold{k}").glob("*px/metrics.csv"),
                       key=lambda p: int(p.parent.name[:-2]))
        if found:
            val = pd.read_csv(found[-1])["val_map5"].dropna()
            if len(val):
                out[k] = float(val.max())
    return out


def oof_by_fold(work: Path, model: str, folds: list[int], labels: Mapping[str, str], mode: str = "sum"
                ) -> dict[int, float]:
    """MAP@5 of each fold's out-of-fold matrix (scores/<model>/fold<k>_oof.npz), its own threshold."""
    from matching.matrix import load_matrix
    from matching.ranking.rank import tune_threshold

    out = {}
    for k in folds:
        path = work / "scores" / model / f"fold{k}_oof.npz"
        if path.is_file():
            m = load_matrix(path)
            out[k] = tune_threshold(m.scores, [labels[n] for n in m.gallery], [labels[n] for n in m.query],
                                    mode=mode)[1]
    return out
