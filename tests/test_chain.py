"""The chain of scripts/run_chain.py and scripts/demo.py: the folds of a config, the steps built from it, the
one step runner, its summaries (read from final_ensemble.py's summary.json)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.catalog import NEW_WHALE, read_train_csv
from data.config import load_config
from data.errors import InputError
from matching.chain import (
    ENSEMBLE_SUMMARY,
    Step,
    build_steps,
    chain_folds,
    demo_steps,
    ensemble_lines,
    ensemble_oof_map5,
    fold_validation,
    folds_file_matches,
    last_stage_size,
    read_ensemble_summary,
    run_steps,
)
from matching.evaluation.submission import read_truth
from matching.matrix import ScoreMatrix, save_matrix

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.mark.parametrize("config, family, model", [
    ("siamese/real_cpu.yaml", "siamese", "real_cpu_siamese"),  # scripts/run_chain.py's default
    ("arcface/real_cpu.yaml", "arcface", "real_cpu"),
])
def test_real_cpu_chains_blend_their_own_frozen_lite0_member_with_local_matching(config, family, model):
    cfg = load_config(CONFIGS / config)
    assert cfg["model"]["name"] == model and cfg["model"]["family"] == family
    assert cfg["model"]["branch"] == "efficientnet_lite0" and cfg["model"]["pretrained"] is True
    assert cfg["keypoints"]["enabled"] is True and cfg["local"]["enabled"] is True
    weights = cfg["ensemble"]["weights"]
    assert set(weights) == {model, "keypoints", cfg["local"]["name"], f"{cfg['local']['name']}_mnn"}
    blocks = [b for stage in cfg["train"]["stages"] for b in stage["blocks"]]
    assert blocks and all(b["freeze_branch"] for b in blocks)
    folds, n_folds = chain_folds(cfg, CONFIGS / config)
    assert folds and max(folds) < n_folds


@pytest.mark.parametrize("cfg, message", [
    ({}, "'folds:' must be a non-empty list"),
    ({"folds": []}, "'folds:' must be a non-empty list"),
    ({"folds": 0}, "'folds:' must be a non-empty list"),
    ({"folds": [0, 4]}, "entry 4 is not a fold number in 0..3"),
    ({"folds": [-1]}, "entry -1 is not"),
    ({"folds": [True]}, "entry True is not"),
    ({"folds": ["0"]}, "entry '0' is not"),
    ({"folds": [1, 1]}, "lists a fold twice"),
    ({"folds": [0], "n_folds": 1}, "n_folds must be an integer of at least 2"),
    ({"folds": [2], "n_folds": 2}, "entry 2 is not a fold number in 0..1"),
])
def test_bad_folds_are_one_clear_error_naming_the_config(cfg, message):
    with pytest.raises(InputError, match=message) as err:
        chain_folds(cfg, "my.yaml")
    assert "my.yaml" in str(err.value)


def test_good_folds_and_the_default_fold_count():
    assert chain_folds({"folds": [2, 0]}, None) == ([2, 0], 4)
    assert chain_folds({"folds": [4], "n_folds": 5}, None) == ([4], 5)


def _cfg(folds, size=160):
    return {"folds": folds, "n_folds": 3, "model": {"name": "m"},
            "train": {"stages": [{"size": 96, "blocks": [{"epochs": 1, "lr": 1e-3, "K": 1000, "batch": 8}]},
                                 {"size": size, "blocks": [{"epochs": 1, "lr": 1e-3, "K": 1, "batch": 8}]}]}}


def test_steps_follow_the_config_folds_and_the_data_dir(tmp_path):
    data, work, config = tmp_path / "data", tmp_path / "work", tmp_path / "c.yaml"
    data.mkdir()
    steps = build_steps(config, _cfg([2, 0]), data, work)
    assert [s.script for s in steps] == ["make_folds.py", "train_fold.py", "train_fold.py", "score_matrix.py",
                                         "final_ensemble.py", "baseline.py"]  # no truth.csv: no evaluation
    assert steps[0].args[-2:] == ["--n-folds", "3"]
    assert [s.args[0] for s in steps[1:3]] == ["2", "0"]
    for s in steps[1:3]:
        assert "--resume" in s.args and s.args[s.args.index("--config") + 1] == str(config)
    assert steps[3].args[-2:] == ["--models", "m"]
    assert steps[-1].args[steps[-1].args.index("--size") + 1] == "160"
    assert steps[-1].args[steps[-1].args.index("--reuse") + 1] == str(work / "features" / "m")
    assert not any(s.done() for s in steps)
    (data / "truth.csv").write_text("Image,Id\n")
    assert [s.script for s in build_steps(config, _cfg([1]), data, work)][-2:] == ["evaluate.py", "baseline.py"]


def test_steps_are_reused_only_when_their_outputs_exist(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    data.mkdir()
    pd.DataFrame({"Image": ["a", "b"], "Id": ["w", "w"], "fold": [0, 1]}).to_csv(data / "folds.csv", index=False)
    steps = {s.name: s for s in build_steps(tmp_path / "c.yaml", _cfg([0, 1]), data, work)}
    assert not steps["folds"].done()  # made with 2 folds, the config asks for 3
    pd.DataFrame({"Image": ["a", "b"], "Id": ["w", "w"], "fold": [0, 2]}).to_csv(data / "folds.csv", index=False)
    assert steps["folds"].done()
    scores = work / "scores" / "m"
    scores.mkdir(parents=True)
    for name in ("fold0_test", "fold0_oof", "fold1_test", "test"):
        (scores / f"{name}.npz").write_bytes(b"")
    assert not steps["score matrices"].done()  # fold1_oof.npz missing
    (scores / "fold1_oof.npz").write_bytes(b"")
    assert steps["score matrices"].done()
    assert not steps["ensemble"].done()  # always redone: cheap, and it reads the score matrices
    with_keypoints = _cfg([0, 1]) | {"keypoints": {"enabled": True}}
    step = {s.name: s for s in build_steps(tmp_path / "c.yaml", with_keypoints, data, work)}["score matrices"]
    assert not step.done()  # the config enables keypoint matching and scores/keypoints/test.npz is missing
    (work / "scores" / "keypoints").mkdir()
    (work / "scores" / "keypoints" / "test.npz").write_bytes(b"")
    assert step.done()


def test_folds_file_matches_needs_the_file():
    assert not folds_file_matches(Path("/nonexistent/folds.csv"), 4)


def test_last_stage_size_and_bad_stages():
    assert last_stage_size(_cfg([0], size=224)) == 224
    with pytest.raises(InputError):
        last_stage_size({"train": {"stages": []}}, "c.yaml")


def test_fold_validation_reads_the_best_of_the_last_stage(tmp_path):
    for size, values in ((96, [0.9, None]), (160, [0.2, 0.5, None, 0.4])):
        d = tmp_path / "runs" / "m" / "fold1" / f"{size}px"
        d.mkdir(parents=True)
        pd.DataFrame({"val_map5": values}).to_csv(d / "metrics.csv", index=False)
    assert fold_validation(tmp_path, "m", [0, 1]) == {1: 0.5}


def test_demo_steps_keep_their_scripts_arguments_and_reuse_tests(tmp_path):
    data, work, config = tmp_path / "data", tmp_path / "work", tmp_path / "demo.yaml"
    steps = demo_steps(config, {"model": {"name": "m"}}, data, work, [0, 1], seed=3)
    assert [s.name for s in steps] == ["synthetic catalog", "folds", "box detector", "boxes", "train fold 0",
                                       "train fold 1", "score matrices", "ensemble", "review page"]
    common = ["--data-dir", str(data), "--work-dir", str(work)]
    assert [(s.script, s.args) for s in steps] == [
        ("make_synthetic.py", ["--out", str(data), "--seed", "3"]),
        ("make_folds.py", ["--data-dir", str(data)]),
        ("train_bbox.py", common), ("predict_bbox.py", common),
        ("train_fold.py", ["0", *common, "--config", str(config), "--resume"]),
        ("train_fold.py", ["1", *common, "--config", str(config), "--resume"]),
        ("score_matrix.py", [*common, "--models", "m"]),
        ("final_ensemble.py", common), ("report.py", common)]
    assert not any(s.done() for s in steps)
    data.mkdir()
    for name in ("train.csv", "folds.csv", "boxes.csv"):
        (data / name).write_text("")
    (work / "bbox").mkdir(parents=True)
    (work / "bbox" / "metrics.csv").write_text("")
    (work / "scores" / "m").mkdir(parents=True)
    (work / "scores" / "m" / "test.npz").write_bytes(b"")
    done = {s.name: s.done() for s in steps}
    assert done == {"synthetic catalog": True, "folds": True, "box detector": True, "boxes": True,
                    "train fold 0": False, "train fold 1": False, "score matrices": True,
                    "ensemble": False, "review page": False}


def _script(folder: Path, name: str, code: int) -> None:
    (folder / name).write_text("import pathlib, sys\n"
                               "pathlib.Path(sys.argv[1]).write_text(' '.join(sys.argv[2:]))\n"
                               f"sys.exit({code})\n")


def test_run_steps_reuses_done_steps_and_stops_at_the_first_failure(tmp_path, capsys):
    _script(tmp_path, "ok.py", 0)
    _script(tmp_path, "fail.py", 3)
    out = tmp_path / "out"
    out.mkdir()
    steps = [Step("first", "ok.py", [str(out / "first"), "a", "b"]),
             Step("reused", "ok.py", [str(out / "reused")], lambda: True),
             Step("broken", "fail.py", [str(out / "broken")]),
             Step("never", "ok.py", [str(out / "never")])]
    echoed = []
    code, timings = run_steps(steps, tmp_path, echo=echoed.append)
    assert code == 3
    assert [name for name, _ in timings] == ["first", "reused"]
    assert timings[0][1] is not None and timings[0][1] >= 0 and timings[1][1] is None
    assert sorted(p.name for p in out.iterdir()) == ["broken", "first"]  # "reused" and "never" did not run
    assert (out / "first").read_text() == "a b"
    assert echoed == [f"== first: python scripts/ok.py {out / 'first'} a b", "== reused: done before, reused",
                      f"== broken: python scripts/fail.py {out / 'broken'}"]
    assert "error: step 'broken' failed (exit 3)" in capsys.readouterr().err


def test_run_steps_runs_every_step_and_prints_by_default(tmp_path, capsys):
    _script(tmp_path, "ok.py", 0)
    code, timings = run_steps([Step("one", "ok.py", [str(tmp_path / "x")])], tmp_path)
    assert code == 0 and [name for name, _ in timings] == ["one"]
    assert f"== one: python scripts/ok.py {tmp_path / 'x'}" in capsys.readouterr().out


def test_the_chain_summary_reads_a_hand_made_ensemble_summary(tmp_path):
    assert read_ensemble_summary(tmp_path) is None and ensemble_lines(None, "m") == []
    assert np.isnan(ensemble_oof_map5(None))
    path = tmp_path / ENSEMBLE_SUMMARY
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "models": [{"name": "m", "weight": 0.75, "oof_map5": 0.61234, "threshold": 0.5},
                   {"name": "other", "weight": 0.25, "oof_map5": None, "threshold": None}],
        "oof_map5": 0.625, "oof_map5_post": 0.6, "post_applied": False, "threshold": 0.4321, "swapped": 2,
        "queries": 10, "test_map5": 0.5, "truth": "truth.csv", "notes": []}))
    summary = read_ensemble_summary(tmp_path)
    assert ensemble_oof_map5(summary) == 0.625
    assert ensemble_lines(summary, "m") == [
        "m                   0.75      0.6123",
        "blend                         0.6250",
        "blend + column pass           0.6000  (not applied to the submission)",
        "threshold 0.4321; column pass swapped 2 test queries"]
    summary |= {"oof_map5": None, "oof_map5_post": None}
    assert ensemble_lines(summary, "other") == ["other               0.25           -",
                                                "threshold 0.4321; column pass swapped 2 test queries"]
    assert np.isnan(ensemble_oof_map5(summary))
    path.write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        read_ensemble_summary(tmp_path)


def _matrix(queries, gallery, labels, truth, rng) -> ScoreMatrix:
    scores = rng.uniform(0.0, 0.5, (len(queries), len(gallery))).astype(np.float32)
    g = np.array([labels[n] for n in gallery])
    for i, q in enumerate(queries):
        scores[i, g == truth[q]] += 0.4
    return ScoreMatrix(scores, np.array(queries), np.array(gallery))


def test_final_ensemble_writes_the_summary_the_chain_prints(tiny_catalog, tmp_path):
    rng = np.random.default_rng(0)
    labels = dict(zip(*read_train_csv(tiny_catalog / "train.csv")[["Image", "Id"]].to_numpy().T))
    gallery = [n for n, i in labels.items() if i != NEW_WHALE]
    truth = read_truth(tiny_catalog / "truth.csv")
    work = tmp_path / "work"
    save_matrix(work / "scores" / "alpha" / "test.npz", _matrix(sorted(truth), gallery, labels, truth, rng))
    save_matrix(work / "scores" / "alpha" / "oof.npz", _matrix(gallery, gallery, labels, labels, rng))
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "final_ensemble.py"), "--data-dir",
                          str(tiny_catalog), "--work-dir", str(work)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    printed = [line for line in run.stdout.splitlines() if line.startswith(("blend", "alpha", "threshold"))]
    summary = read_ensemble_summary(work)
    assert ensemble_lines(summary, "alpha") == printed and len(printed) == 4
    test_line = [line for line in run.stdout.splitlines() if line.startswith("test MAP@5")]
    assert test_line and test_line[0].split()[2] == f"{summary['test_map5']:.4f}"
    assert summary["truth"] == str(tiny_catalog / "truth.csv") and summary["queries"] == len(truth)
    assert ensemble_oof_map5(summary) == pytest.approx(float(printed[1].split()[-1]), abs=5e-5)
