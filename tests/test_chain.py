"""The chain of scripts/run_chain.py: the folds of a config, the steps built from it, its summaries."""

from pathlib import Path

import pandas as pd
import pytest

from data.config import load_config
from data.errors import InputError
from matching.chain import build_steps, chain_folds, fold_validation, folds_file_matches, last_stage_size

REPO = Path(__file__).resolve().parents[1]
REAL_CPU = REPO / "configs" / "real_cpu.yaml"


def test_real_cpu_config_is_a_frozen_lite0_schedule_with_valid_folds():
    cfg = load_config(REAL_CPU)
    assert cfg["model"]["name"] == "real_cpu"
    assert cfg["model"]["branch"] == "efficientnet_lite0" and cfg["model"]["pretrained"] is True
    assert cfg["keypoints"]["enabled"] is True
    blocks = [b for stage in cfg["train"]["stages"] for b in stage["blocks"]]
    assert blocks and all(b["freeze_branch"] for b in blocks)
    folds, n_folds = chain_folds(cfg, REAL_CPU)
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
