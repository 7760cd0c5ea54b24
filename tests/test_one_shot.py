"""One-shot accuracy: the top-1 of hand-made matrices, the interval, and one_shot.py on a tiny untrained run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from data.checkpoint import save_checkpoint
from data.errors import InputError
from data.protocol import OneShotConfig, write_one_shot
from matching.evaluation.evaluate import evaluate_files
from matching.evaluation.one_shot import TaskResult, read_tasks, result_frame, task_result, wilson_interval
from matching.matrix import ScoreMatrix, load_matrix
from siamese.model import build_model

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"name": "tiny", "branch": "test_efficientnet", "in_chans": 3, "pool": "max", "pretrained": False,
         "weights": None, "head_hidden": 8}


def _matrix(scores: list[list[float]], query: list[str], gallery: list[str]) -> ScoreMatrix:
    return ScoreMatrix(np.asarray(scores, np.float32), np.asarray(query), np.asarray(gallery))


def test_top1_is_the_argmax_over_the_catalog_and_counts_right_answers():
    labels = {"s_b.png": "A/b", "s_a.png": "A/a", "s_c.png": "A/c"}
    m = _matrix([[0.1, 0.9, 0.3],   # q0 -> s_a (A/a), truth A/a: right
                 [0.8, 0.7, 0.2],   # q1 -> s_b (A/b), truth A/c: wrong
                 [0.0, 0.1, 0.6]],  # q2 -> s_c (A/c), truth A/c: right
                ["q0", "q1", "q2"], ["s_b.png", "s_a.png", "s_c.png"])
    truth = {"q0": "A/a", "q1": "A/c", "q2": "A/c"}
    result, ranked = task_result("task_000", "A", m, labels, truth)
    assert result == TaskResult("task_000", "A", 3, 2) and result.accuracy == pytest.approx(2 / 3)
    argmax = [labels[m.gallery[j]] for j in m.scores.argmax(axis=1)]
    assert [r[0] for r in ranked] == argmax
    assert ranked[1] == ["A/b", "A/a", "A/c"] and all("new_whale" not in r for r in ranked)


def test_ties_go_to_the_first_label_and_a_missing_row_is_an_error():
    m = _matrix([[0.5, 0.5]], ["q0"], ["x.png", "y.png"])
    _, ranked = task_result("t", "G", m, {"x.png": "G/z", "y.png": "G/y"}, {"q0": "G/y"})
    assert ranked == [["G/y", "G/z"]]
    with pytest.raises(InputError, match="'q9' of truth.csv has no score row"):
        task_result("t", "G", m, {"x.png": "G/z", "y.png": "G/y"}, {"q0": "G/y", "q9": "G/y"})


def test_wilson_interval_and_the_pooled_row():
    assert wilson_interval(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-6)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.277533), abs=1e-6)
    assert wilson_interval(18, 20) == pytest.approx((0.698966, 0.972134), abs=1e-6)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    df = result_frame([TaskResult("task_000", "A", 20, 18), TaskResult("task_001", "B", 20, 12)])
    assert list(df["task"]) == ["task_000", "task_001", "all"]
    pooled = df.iloc[-1]
    assert (pooled["queries"], pooled["correct"], pooled["accuracy"]) == (40, 30, 0.75)
    assert (pooled["ci_low"], pooled["ci_high"]) == pytest.approx(wilson_interval(30, 40))


def test_a_folder_that_is_not_a_one_shot_protocol_is_refused(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_tasks(tmp_path)
    (tmp_path / "protocol.json").write_text('{"settings": {}}')
    with pytest.raises(InputError, match="not a one-shot protocol"):
        read_tasks(tmp_path)


def _source(root: Path) -> Path:
    """Groups G0, G1, G2 of 3 classes with 2 grey 40x40 PNGs each (a class's photos share a pattern)."""
    rng = np.random.default_rng(0)
    rows = []
    for g in range(3):
        for c in range(3):
            base = rng.random((40, 40))
            for p in range(2):
                name = f"g{g}c{c}_{p}.png"
                (root / "train").mkdir(parents=True, exist_ok=True)
                noisy = np.clip(base + 0.1 * rng.standard_normal(base.shape), 0, 1)
                Image.fromarray((noisy * 255).astype(np.uint8)).save(root / "train" / name)
                rows.append((name, f"G{g}/c{c}"))
    pd.DataFrame(rows, columns=["Image", "Id"]).to_csv(root / "train.csv", index=False)
    return root


def _tiny_run(runs: Path) -> None:
    torch.manual_seed(0)
    run = runs / "tiny" / "fold0"
    cfg = {"model": MODEL, "train": {"stages": [{"size": 32, "blocks": [
        {"epochs": 1, "lr": 1e-3, "K": 1000, "freeze_branch": True, "batch": 8}]}]}}
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    save_checkpoint(run / "32px" / "best.pt", {"model": build_model(MODEL).state_dict(), "val_map5": 0.0, "size": 32})


def test_one_shot_script_on_a_tiny_run_matches_the_matrices_and_evaluate(tmp_path):
    proto = tmp_path / "proto"
    write_one_shot(_source(tmp_path / "src"), proto, OneShotConfig(ways=3, tasks=2, held_out_groups=2, seed=0))
    _tiny_run(tmp_path / "runs")
    work = tmp_path / "work"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "one_shot.py"), "--protocol", str(proto),
                          "--runs", str(tmp_path / "runs"), "--work-dir", str(work), "--device", "cpu",
                          "--batch", "4"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    table = pd.read_csv(work / "one_shot.csv", keep_default_na=False)
    assert list(table["task"]) == ["task_000", "task_001", "all"]
    correct = 0
    for _, row in table.iloc[:-1].iterrows():
        task = proto / row["task"]
        # The task's own caches and matrix; its top-1, recomputed here as the argmax, is the one reported.
        assert (work / row["task"] / "features" / "tiny" / "fold0" / "catalog.npz").is_file()
        m = load_matrix(work / row["task"] / "scores" / "tiny" / "test.npz")
        shots = pd.read_csv(task / "train.csv").set_index("Image")["Id"]
        truth = pd.read_csv(task / "truth.csv").set_index("Image")["Id"]
        assert m.scores.shape == (3, 3) and sorted(m.gallery) == sorted(shots.index)
        hits = sum(shots[m.gallery[j]] == truth[q] for q, j in zip(m.query, m.scores.argmax(axis=1)))
        assert row["correct"] == hits and row["queries"] == 3
        top1 = evaluate_files(work / row["task"] / "submission.csv", task / "truth.csv").top1
        assert top1 == pytest.approx(row["accuracy"])
        correct += hits
    assert table.iloc[-1]["correct"] == correct
    assert res.stdout.strip().splitlines()[-1] == f"one-shot accuracy {correct / 6:.6f}"
    missing = subprocess.run([sys.executable, str(ROOT / "scripts" / "one_shot.py"), "--protocol", str(proto),
                              "--runs", str(tmp_path / "none")], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 2 and "no trained runs" in missing.stderr
