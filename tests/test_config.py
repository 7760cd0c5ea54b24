from pathlib import Path

import pytest

from data.config import REPO_ROOT, load_config
from data.errors import InputError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_child_overrides_base_key_by_key(tmp_path):
    write(tmp_path / "base.yaml", "model: {branch: densenet121, pool: max}\ntrain: {seed: 0}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\nmodel: {branch: kernel}\n")
    cfg = load_config(child)
    assert cfg == {"model": {"branch": "kernel", "pool": "max"}, "train": {"seed": 0}}


def test_overrides_parse_values_as_yaml_and_create_nested_keys(tmp_path):
    path = write(tmp_path / "c.yaml", "train: {seed: 0}\n")
    cfg = load_config(path, ["train.seed=3", "train.stages=[1, 2]", "model.pretrained=false", "x.y.z=a b"])
    assert cfg["train"] == {"seed": 3, "stages": [1, 2]}
    assert cfg["model"]["pretrained"] is False
    assert cfg["x"]["y"]["z"] == "a b"


def test_lists_are_replaced_not_merged(tmp_path):
    write(tmp_path / "base.yaml", "train: {stages: [1, 2, 3]}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\ntrain: {stages: [9]}\n")
    assert load_config(child)["train"]["stages"] == [9]


@pytest.mark.parametrize("text, problem", [
    ("model: [unclosed\n", "not valid YAML"),
    ("- a\n- b\n", "YAML mapping"),
    ("base: c.yaml\n", "inherits from itself"),
])
def test_bad_config_is_one_line_naming_the_file(tmp_path, text, problem):
    path = write(tmp_path / "c.yaml", text)
    with pytest.raises(InputError) as err:
        load_config(path)
    assert problem in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_config_and_bad_override_are_clear(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    path = write(tmp_path / "c.yaml", "a: 1\n")
    with pytest.raises(InputError, match="key=value"):
        load_config(path, ["no_equals_sign"])


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO_ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_load_with_a_valid_schedule(name):
    from siamese.schedule import parse_schedule

    cfg = load_config(REPO_ROOT / "configs" / name)
    if cfg.get("train", {}).get("stages"):
        stages = parse_schedule(cfg["train"]["stages"], name)
        assert [s.size for s in stages] == sorted(s.size for s in stages), "resolution must grow stage by stage"
