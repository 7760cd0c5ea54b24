"""Configs: base chains, overrides, the typed schema (data/settings.py) and its one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data import settings
from data.config import REPO_ROOT, load_config
from data.errors import InputError
from data.settings import Bbox, Settings, check, defaults

CONFIGS = sorted(p.name for p in (REPO_ROOT / "configs").glob("*.yaml"))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def schema_of(name: str) -> type:
    return Bbox if name.startswith("bbox") else Settings


def one_line_error(path, overrides=None, schema=Settings) -> str:
    with pytest.raises(InputError) as err:
        load_config(path, overrides, schema)
    text = str(err.value)
    assert "\n" not in text
    return text


def test_child_overrides_base_key_by_key_and_the_rest_is_filled_in(tmp_path):
    write(tmp_path / "base.yaml", "model: {branch: resnet18, pool: gem}\ntrain: {seed: 5}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\nmodel: {branch: kernel}\n")
    cfg = load_config(child)
    assert cfg["model"]["branch"] == "kernel" and cfg["model"]["pool"] == "gem" and cfg["train"]["seed"] == 5
    assert set(cfg) == set(defaults()) and set(cfg["train"]) == set(defaults()["train"])
    assert {k: v for k, v in cfg["loss"].items()} == defaults()["loss"]


def test_every_default_is_present_and_indexable(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", "model: {name: m}\n"))

    def same_keys(a, b, where=""):
        assert set(a) == set(b), where
        for k, v in b.items():
            if isinstance(v, dict):
                same_keys(a[k], v, f"{where}.{k}")

    same_keys(cfg, defaults())
    assert cfg["model"]["name"] == "m"
    for dotted in ("model.neck", "train.trainable_stages", "train.average_last", "train.augment", "score.tta",
                   "train.frozen_views", "train.mine_every", "train.neck_lr_mult"):
        section, name = dotted.split(".")
        assert name in cfg[section], dotted
    assert check(cfg, Settings) == cfg  # a complete config is its own completion


def test_a_run_config_written_with_every_default_reads_back_and_loads_again(tmp_path):
    cfg = load_config(REPO_ROOT / "configs" / "siamese/demo_finetune.yaml")
    run = write(tmp_path / "config.yaml", yaml.safe_dump(cfg))  # as runs/<model>/fold<k>/config.yaml
    assert yaml.safe_load(run.read_text()) == cfg
    assert load_config(run) == cfg


def test_overrides_parse_values_as_yaml_and_are_checked(tmp_path):
    path = write(tmp_path / "c.yaml", "train: {seed: 0}\n")
    cfg = load_config(path, ["train.seed=3", "train.stages=[1, 2]", "model.pretrained=false",
                             "model.neck={dim: 64}", "ensemble.weights.demo=2"])
    assert cfg["train"]["seed"] == 3 and cfg["train"]["stages"] == [1, 2]
    assert cfg["model"]["pretrained"] is False
    assert cfg["model"]["neck"] == {"dim": 64, "dropout": 0.0}
    assert cfg["ensemble"]["weights"] == {"demo": 2}


def test_lists_are_replaced_not_merged(tmp_path):
    write(tmp_path / "base.yaml", "train: {stages: [1, 2, 3]}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\ntrain: {stages: [9]}\n")
    assert load_config(child)["train"]["stages"] == [9]


@pytest.mark.parametrize("override, words", [
    ("trian.seed=3", ["unknown key trian.seed", "did you mean train.seed?"]),
    ("train.sed=3", ["unknown key train.sed", "did you mean train.seed?"]),
    ("model.neck.dimm=3", ["unknown key model.neck.dimm", "did you mean model.neck.dim?"]),
    ("ensemble.postprocess.min_scor=0.5", ["did you mean ensemble.postprocess.min_score?"]),
    ("x.y.z=3", ["unknown key x.y.z"]),
    ("train.seed=abc", ["train.seed", "expected an integer", "'abc'"]),
    ("train.seed=[1, 2]", ["train.seed", "expected an integer", "[1, 2]"]),
    ("train.seed=true", ["train.seed", "expected an integer"]),
    ("train=5", ["train", "expected a mapping"]),
    ("train.stages=5", ["train.stages", "expected a list"]),
    ("train.seed=[", ["not valid YAML"]),
    ("train.weight_decay=1e-3", ["train.weight_decay", "expected a number", "1.0e-3"]),
    ("train.frozen_views=-1", ["train.frozen_views", ">= 0", "-1"]),
    ("score.tta=flop", ["score.tta", "one of none, flip", "'flop'"]),
    ("model.pretrained=1", ["model.pretrained", "true or false"]),
    ("model.neck=5", ["model.neck", "a mapping of settings or null"]),
    ("model.neck={dropout: 0.1}", ["model.neck.dim is required"]),
    ("ensemble.weights.demo=x", ["ensemble.weights.demo", "expected a number"]),
])
def test_bad_override_is_one_line_naming_the_override_and_the_key(tmp_path, override, words):
    path = write(tmp_path / "c.yaml", "train: {seed: 0}\n")
    text = one_line_error(path, [override])
    assert text.startswith(f"--set {override}: ")
    for w in words:
        assert w in text, text
    assert str(path) not in text


@pytest.mark.parametrize("text, words", [
    ("model: [unclosed\n", ["not valid YAML"]),
    ("- a\n- b\n", ["YAML mapping"]),
    ("base: c.yaml\n", ["inherits from itself"]),
    ("", ["is empty"]),
    ("# only a comment\n", ["is empty"]),
    ("base: 5\n", ["base:", "must name another config file", "5"]),
    ("base: [a.yaml]\n", ["base:", "a string"]),
    ("trian: {seed: 3}\n", ["unknown key trian.seed", "did you mean train.seed?"]),
    ("train: {seed: 3, epochz: 2}\n", ["unknown key train.epochz"]),
    ("train: 5\n", ["train: expected a mapping"]),
    ("train: {seed: abc}\n", ["train.seed: expected an integer, got 'abc'"]),
    ("train: {stages: {size: 3}}\n", ["train.stages: expected a list"]),
    ("model: {arch: retinanet}\n", ["unknown key model.arch", "box detector config"]),
    ("model: {neck: {dropout: 0.1}}\n", ["model.neck.dim is required"]),
    ("folds: [0, one]\n", ["folds[1]", "expected an integer"]),
])
def test_bad_config_is_one_line_naming_the_file(tmp_path, text, words):
    path = write(tmp_path / "c.yaml", text)
    message = one_line_error(path)
    assert message.startswith(str(path)), message
    for w in words:
        assert w in message, message


def test_a_bad_key_in_a_base_names_the_base_and_a_missing_base_names_its_child(tmp_path):
    base = write(tmp_path / "base.yaml", "train: {seeed: 1}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\nmodel: {name: m}\n")
    assert one_line_error(child).startswith(f"{base}: unknown key train.seeed")
    orphan = write(tmp_path / "orphan.yaml", "base: absent.yaml\n")
    message = one_line_error(orphan)
    assert "absent.yaml: config file not found" in message and str(orphan) in message


def test_missing_config_and_bad_override_are_clear(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    path = write(tmp_path / "c.yaml", "train: {seed: 1}\n")
    with pytest.raises(InputError, match="key=value"):
        load_config(path, ["no_equals_sign"])


def test_the_box_detector_schema_and_its_own_errors(tmp_path):
    cfg = load_config(REPO_ROOT / "configs" / "bbox/default.yaml", ["train.epochs=2"], Bbox)
    assert cfg["train"]["epochs"] == 2 and set(cfg["predict"]) == set(defaults(Bbox)["predict"])
    text = one_line_error(REPO_ROOT / "configs" / "bbox/default.yaml", ["train.epocs=2"], Bbox)
    assert "unknown key train.epocs" in text and "did you mean train.epochs?" in text
    assert "one of fasterrcnn, retinanet" in one_line_error(REPO_ROOT / "configs" / "bbox/default.yaml",
                                                            ["model.arch=yolo"], Bbox)


def test_bbox_yaml_states_the_schema_defaults_and_bbox_reads_them():
    from bbox.detector import model_config
    from bbox.predict import predict_config
    from bbox.train import full_config

    assert load_config(REPO_ROOT / "configs" / "bbox/default.yaml", schema=Bbox) == defaults(Bbox)
    full = full_config({"train": {"epochs": 1}})
    assert full["train"]["epochs"] == 1 and full["train"]["optimizer"] == "adamw"
    assert full["predict"] == predict_config(None) and full["model"] == model_config(None)
    with pytest.raises(InputError, match="unknown key model.backbon"):
        model_config({"backbon": "resnet18"})


def test_overrides_without_a_config_file_keep_only_what_they_set_and_are_checked():
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import _cli
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))
    args = _cli.parser("test").parse_args(["--set", "ensemble.mode=max", "--set", "ensemble.weights={a: 1}"])
    assert _cli.config_from(args) == {"ensemble": {"mode": "max", "weights": {"a": 1}}}
    bad = _cli.parser("test").parse_args(["--set", "ensemble.mood=max"])
    with pytest.raises(InputError, match="did you mean ensemble.mode"):
        _cli.config_from(bad)


def test_train_fold_with_a_misspelt_key_exits_2_with_one_line_and_writes_nothing(tmp_path):
    work = tmp_path / "work"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "train_fold.py"), "0",
                           "--work-dir", str(work), "--set", "trian.seed=3"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --set trian.seed=3: unknown key trian.seed (did you mean train.seed?)"]
    assert not work.exists()


def test_schema_choices_match_what_the_code_accepts():
    from typing import get_args

    from matching.similarity.cosine import SCORINGS
    from siamese.branch import POOLS
    from siamese.head import HEAD_INITS

    hints = settings._hints
    assert get_args(hints(settings.Model)["pool"]) == POOLS
    assert set(get_args(hints(settings.Model)["head_init"])) == set(HEAD_INITS)
    assert get_args(hints(settings.Score)["scoring"]) == SCORINGS


def test_keypoint_defaults_are_the_keypoint_settings():
    from dataclasses import asdict

    from matching.similarity.keypoints import KeypointSettings

    assert defaults()["keypoints"] == asdict(KeypointSettings())
    assert KeypointSettings.from_config(defaults()["keypoints"]) == KeypointSettings()


def test_check_fills_a_section_and_a_partial_check_adds_nothing():
    assert check({"seed": 3}, settings.Train, path="train")["seed"] == 3
    assert check({"train": {"seed": 3}}, Settings, complete=False) == {"train": {"seed": 3}}
    with pytest.raises(InputError, match="train.seed: expected an integer"):
        check({"seed": "3"}, settings.Train, "my.yaml", path="train")


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_load_with_a_valid_schedule(name):
    from siamese.schedule import parse_schedule

    cfg = load_config(REPO_ROOT / "configs" / name, schema=schema_of(name))
    assert set(cfg) == set(defaults(schema_of(name)))
    if schema_of(name) is Settings and cfg["train"]["stages"]:
        stages = parse_schedule(cfg["train"]["stages"], name, require_k=cfg["model"]["family"] == "siamese")
        assert [s.size for s in stages] == sorted(s.size for s in stages), "resolution must grow stage by stage"
