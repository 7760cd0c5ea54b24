"""The whole chain of one config on one catalog, as steps of the project's own scripts (scripts/run_chain.py).

A chain config is a Siamese config (``base:`` inheritance as usual) with two top-level keys of its own:
``folds`` (the validation folds to train, e.g. ``[0, 1]``) and ``n_folds`` (``make_folds.py --n-folds``,
default 4). Steps: folds, one training run per fold (``--resume``), score matrices, ensemble, evaluation
(when the data dir has ``truth.csv``) and the frozen-branch cosine baseline at the size of the last stage.
A step whose outputs exist is reused, except the cheap ones that read the others (ensemble, evaluation).

The one step runner of the project (:func:`run_steps`) runs these steps and those of scripts/demo.py
(:func:`demo_steps`). The chain's summary reads the results of final_ensemble.py from
``<work-dir>/ensemble/summary.json`` (:func:`read_ensemble_summary`), never from its printed output.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from data.errors import InputError
from data.settings import Settings, check
from matching.ranking.ensemble import summary_lines
from matching.runs.keypoint_scores import keypoint_scores_done
from matching.runs.local_scores import local_scores_done

ENSEMBLE_SUMMARY = Path("ensemble") / "summary.json"  # under --work-dir, written by scripts/final_ensemble.py


@dataclass(frozen=True)
class Step:
    name: str
    script: str  # file name under scripts/
    args: list[str]
    done: Callable[[], bool] = field(default=lambda: False, compare=False)


def _echo(line: str) -> None:
    print(line, flush=True)


def run_steps(steps: Sequence[Step], scripts_dir: Path, echo: Callable[[str], None] = _echo
              ) -> tuple[int, list[tuple[str, float | None]]]:
    """Run each step's script (``scripts_dir / step.script``) in a subprocess of this Python, its output passing
    through to the terminal; a step whose ``done()`` is true is reused. ``echo`` gets the ``== name: ...`` line
    of each step. Stops at the first failing step. Returns (exit code: 0, or the failing step's; the
    (name, seconds) of the steps run so far, seconds None for a reused step)."""
    timings: list[tuple[str, float | None]] = []
    for step in steps:
        if step.done():
            echo(f"== {step.name}: done before, reused")
            timings.append((step.name, None))
            continue
        echo(f"== {step.name}: python scripts/{' '.join([step.script, *step.args])}")
        start = time.perf_counter()
        code = subprocess.run([sys.executable, str(Path(scripts_dir) / step.script), *step.args]).returncode
        if code != 0:
            print(f"error: step '{step.name}' failed (exit {code})", file=sys.stderr, flush=True)
            return code, timings
        timings.append((step.name, time.perf_counter() - start))
    return 0, timings


def demo_steps(config: Path, cfg: Mapping, data: Path, work: Path, folds: Sequence[int], seed: int = 0
               ) -> list[Step]:
    """The steps of scripts/demo.py on the synthetic catalog: generate, fold, box, train ``folds``, score,
    blend and submit, write the review page. ``cfg``: the model config (completed here with the schema's
    defaults)."""
    cfg = check(dict(cfg), Settings, config)
    model = cfg["model"]["name"]
    common = ["--data-dir", str(data), "--work-dir", str(work)]
    steps = [
        Step("synthetic catalog", "make_synthetic.py", ["--out", str(data), "--seed", str(seed)],
             lambda: (data / "train.csv").is_file()),
        Step("folds", "make_folds.py", ["--data-dir", str(data)], lambda: (data / "folds.csv").is_file()),
        Step("box detector", "train_bbox.py", common, lambda: (work / "bbox" / "metrics.csv").is_file()),
        Step("boxes", "predict_bbox.py", common, lambda: (data / "boxes.csv").is_file()),
    ]
    for k in folds:
        steps.append(Step(f"train fold {k}", "train_fold.py", [str(k), *common, "--config", str(config), "--resume"],
                          lambda k=k: _run_complete(work / "runs" / model / f"fold{k}")))
    steps += [
        Step("score matrices", "score_matrix.py", [*common, "--models", model],
             lambda: (work / "scores" / model / "test.npz").is_file() and keypoint_scores_done(cfg, work)
             and local_scores_done(cfg, work)),
        Step("ensemble", "final_ensemble.py", common),
        Step("review page", "report.py", common),
    ]
    return steps


def chain_folds(cfg: Mapping, source: str | Path | None = None) -> tuple[list[int], int]:
    """(folds to train, n_folds) from the config's top-level ``folds`` and ``n_folds``; bad values raise
    :class:`InputError` naming ``source``."""
    n_folds = cfg.get("n_folds", Settings.n_folds)  # a partial config: the schema's default
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

    return parse_schedule(cfg.get("train", {}).get("stages"), str(source or "train.stages"), require_k=False)[-1].size


def folds_file_matches(path: Path, n_folds: int) -> bool:
    """Whether ``folds.csv`` exists and was made with ``n_folds`` folds (its largest fold is n_folds - 1)."""
    if not path.is_file():
        return False
    folds = pd.read_csv(path, usecols=["fold"])["fold"]
    return int(folds.max()) == n_folds - 1


def build_steps(config: Path, cfg: Mapping, data: Path, work: Path) -> list[Step]:
    """The steps of the chain in order, each a script with its arguments and a test of its outputs."""
    folds, n_folds = chain_folds(cfg, config)
    cfg = check(dict(cfg), Settings, config)
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
                      and (scores / "test.npz").is_file() and keypoint_scores_done(cfg, work)
                      and local_scores_done(cfg, work)))
    steps.append(Step("ensemble", "final_ensemble.py", [*common, "--config", str(config)]))  # its ensemble:
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
    from siamese.trainer import run_complete

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


def read_ensemble_summary(work: Path) -> dict | None:
    """The results final_ensemble.py wrote to ``<work>/ensemble/summary.json``; None when there is none."""
    path = Path(work) / ENSEMBLE_SUMMARY
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON ({err}); run scripts/final_ensemble.py again") from err


def ensemble_lines(summary: Mapping | None, model: str) -> list[str]:
    """The lines of final_ensemble.py's results the chain's summary shows, as final_ensemble.py prints them:
    ``model``'s out-of-fold MAP@5, the blend's with and without the column-wise pass, the threshold."""
    return summary_lines(summary, model)


def ensemble_oof_map5(summary: Mapping | None) -> float:
    """The blend's out-of-fold MAP@5 (without the column-wise pass); NaN when there is none."""
    value = (summary or {}).get("oof_map5")
    return float("nan") if value is None else float(value)


def section_overrides(cfg: Mapping, sections: Sequence[str]) -> list[str]:
    """``--set key=value`` items (dotted keys, YAML values) that restate ``sections`` of a (partial) config."""
    import yaml

    items: list[str] = []

    def walk(node, prefix: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}")
        else:
            value = yaml.safe_dump(node, default_flow_style=True).strip().removesuffix("...").strip()
            items.append(f"{prefix}={value}")

    for name in sections:
        if cfg.get(name) is not None:
            walk(cfg[name], name)
    return items


@dataclass(frozen=True)
class Batch:
    """One batch of new photos to identify against a catalog (scripts/identify.py)."""

    catalog: Path  # train.csv, train/ (boxes.csv, folds.csv when made)
    photos: Path  # the new photos
    out: Path  # submission.csv, candidates.csv, scores/, ensemble/, report/
    cache: Path  # the per-photo feature cache, shared by the batches of a season
    config: Path  # ensemble: (and local: for the untrained members)
    runs: Path | None = None  # trained runs; None: the untrained members only
    box_model: Path | None = None  # a work folder holding bbox/fold<k>.pt
    truth: Path | None = None  # the batch's truth (a simulated season): MAP@5 printed
    oof_queries: int = 200  # leave-one-out queries of the untrained members where the catalog has no folds.csv
    members: str = "auto"  # keypoints and local matching: auto (on without runs, else as the runs' configs say)


def identify_steps(batch: Batch, cfg: Mapping) -> list[Step]:
    """The steps of scripts/identify.py: boxes of the new photos (with a box model), score matrices against the
    catalog, ensemble and submission (with candidates.csv), review page, and the evaluation given truth.
    ``cfg``: the batch's config as its files and ``--set`` items write it, ``base:`` chain resolved, no defaults
    filled in (``load_config(..., complete=False)``): its ``local:`` section is restated for score_matrix.py, and a
    ``keypoints:`` or ``local:`` section with ``enabled: false`` turns that member off."""
    b = batch
    where = ["--data-dir", str(b.catalog), "--test-dir", str(b.photos)]
    boxes = b.out / "boxes.csv"
    steps = []
    if b.box_model is not None:
        steps.append(Step("boxes", "predict_bbox.py", [*where, "--work-dir", str(b.box_model), "--out", str(boxes),
                                                        "--only", "unboxed", "--sheet-count", "0"]))
        where += ["--boxes", str(boxes)]
    members = b.members if b.members != "auto" else ("auto" if b.runs is not None else "on")

    def switch(section: str) -> str:  # a member the config turns off (enabled: false) stays off
        return "off" if members != "off" and (cfg.get(section) or {}).get("enabled") is False else members

    score = [*where, "--work-dir", str(b.out), "--cache-dir", str(b.cache), "--oof-queries", str(b.oof_queries),
             "--keypoints", switch("keypoints"), "--local", switch("local")]
    if b.runs is not None:
        score += ["--runs", str(b.runs)]
    for item in section_overrides(cfg, ["local", "more_local"]):
        score += ["--set", item]
    truth = ["--truth", str(b.truth)] if b.truth is not None else []
    steps += [
        Step("score matrices", "score_matrix.py", score),
        Step("ensemble", "final_ensemble.py",
             ["--data-dir", str(b.catalog), "--work-dir", str(b.out), "--config", str(b.config), *truth]),
        Step("review page", "report.py", [*where, "--work-dir", str(b.out), "--config", str(b.config), *truth,
                                          *(["--runs", str(b.runs)] if b.runs is not None else [])]),
    ]
    if b.truth is not None:
        steps.append(Step("evaluation", "evaluate.py", ["--submission", str(b.out / "submission.csv"),
                                                        "--truth", str(b.truth),
                                                        "--json", str(b.out / "evaluation.json")]))
    return steps
