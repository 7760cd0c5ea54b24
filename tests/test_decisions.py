"""apply_decisions.py: a person's decisions on a batch written back into the catalog, all or nothing."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import data.decisions as decisions_module
from data.catalog import TRAIN_ONLY, load_catalog, read_folds, read_train_csv
from data.decisions import apply_plan, next_ids, plan_decisions
from data.errors import InputError
from data.io import write_csv
from tests.batches import copy_batch, failing_at

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def season(tiny_catalog, tmp_path):
    """A catalog (the tiny catalog's train set, with an auto_0007 Id already used) and a batch of 3 photos
    (its first three test photos)."""
    catalog = tmp_path / "catalog"
    shutil.copytree(tiny_catalog, catalog, ignore=shutil.ignore_patterns("test", "truth*.csv"))
    train = read_train_csv(catalog / "train.csv")
    train.loc[train.index[0], "Id"] = "auto_0007"
    write_csv(train, catalog / "train.csv")
    folds = read_folds(catalog / "folds.csv")
    folds.loc[folds.index[0], "Id"] = "auto_0007"
    write_csv(folds, catalog / "folds.csv")
    boxes = pd.read_csv(catalog / "boxes.csv")
    write_csv(boxes[boxes["Image"].isin(set(train["Image"]))], catalog / "boxes.csv")
    batch = tmp_path / "batch"
    tests = sorted(p.name for p in (tiny_catalog / "test").iterdir())[:3]
    batch_boxes = copy_batch(tiny_catalog, batch, tests, tmp_path / "boxes.csv")
    known = [i for i in train["Id"].unique() if i != "new_whale" and i != "auto_0007"]
    return catalog, batch, tests, known, batch_boxes


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def decisions(tmp_path: Path, rows, name="decisions.csv") -> Path:
    path = tmp_path / name
    path.write_text("Image,Decision\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return path


def test_new_ids_follow_the_largest_counter_of_their_prefix():
    assert next_ids(["a", "auto_0007", "auto_12x", "other_0100"], "auto_", 2) == ["auto_0008", "auto_0009"]
    assert next_ids(["a"], "auto_", 1) == ["auto_0001"]


def test_confirmed_new_and_skipped_photos_reach_the_catalog_as_decided(season, tmp_path):
    catalog, batch, tests, known, batch_boxes = season
    before = read_train_csv(catalog / "train.csv")
    path = decisions(tmp_path, [(tests[0], known[1]), (tests[1], "none"), (tests[2], "skip")])
    plan = plan_decisions(catalog, path, batch, boxes_csv=batch_boxes)
    backup = apply_plan(plan)
    after = read_train_csv(catalog / "train.csv")
    assert len(after) == len(before) + 2
    added = after.iloc[len(before):].set_index("Image")["Id"].to_dict()
    assert added == {tests[0]: known[1], tests[1]: "auto_0008"}  # after the auto_0007 already used
    assert (catalog / "train" / tests[0]).read_bytes() == (batch / tests[0]).read_bytes()
    assert not (catalog / "train" / tests[2]).exists()
    assert (backup / "train.csv").read_text() == write_csv(before, tmp_path / "old.csv").read_text()
    folds = read_folds(catalog / "folds.csv", after)  # still matches train.csv
    assert set(folds.loc[folds["fold"] == TRAIN_ONLY, "Image"]) >= {tests[0], tests[1]}
    load_catalog(catalog, need_test=False)  # boxes.csv: the added photos' boxes, inside their photos
    boxes = pd.read_csv(catalog / "boxes.csv")
    assert {tests[0], tests[1]} <= set(boxes["Image"]) and tests[2] not in set(boxes["Image"])


@pytest.mark.parametrize("rows, message", [
    (lambda t, k: [(t[0], k[0]), ("elsewhere.jpg", k[0])], "not in this batch"),
    (lambda t, k: [(t[0], k[0]), (t[0], "none")], "decided twice"),
    (lambda t, k: [(t[0], "no_such_whale")], "does not exist in the catalog"),
    (lambda t, k: [(t[0], "")], "empty Decision"),
])
def test_a_bad_decisions_file_is_one_line_and_leaves_the_catalog_as_it_was(season, tmp_path, rows, message):
    catalog, batch, tests, known, _ = season
    before = snapshot(catalog)
    path = decisions(tmp_path, rows(tests, known))
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "apply_decisions.py"), "--catalog", str(catalog),
                             "--photos", str(batch), "--decisions", str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(path) in lines[0]
    assert snapshot(catalog) == before


def test_a_photo_already_in_the_catalog_or_a_file_without_its_columns_is_refused(season, tmp_path):
    catalog, batch, tests, known, _ = season
    before = snapshot(catalog)
    name = read_train_csv(catalog / "train.csv")["Image"].iloc[1]
    shutil.copy(catalog / "train" / name, batch / name)
    with pytest.raises(InputError, match="already in the catalog"):
        plan_decisions(catalog, decisions(tmp_path, [(name, known[0])]), batch)
    bad = tmp_path / "bad.csv"
    bad.write_text("Image,Id\nx.jpg,a\n")
    with pytest.raises(InputError, match="Decision"):
        plan_decisions(catalog, bad, batch)
    assert snapshot(catalog) == before


def test_a_failure_part_way_puts_the_catalog_back(season, tmp_path, monkeypatch):
    catalog, batch, tests, known, _ = season
    before = {k: v for k, v in snapshot(catalog).items()}
    plan = plan_decisions(catalog, decisions(tmp_path, [(tests[0], known[0]), (tests[1], known[1])]), batch)
    monkeypatch.setattr(decisions_module, "place_file", failing_at(decisions_module.place_file, 2))
    with pytest.raises(OSError, match="disk full"):
        apply_plan(plan)
    after = {k: v for k, v in snapshot(catalog).items() if not k.startswith("backups/")}
    assert after == before


def test_a_dry_run_prints_the_plan_and_writes_nothing(season, tmp_path):
    catalog, batch, tests, known, _ = season
    before = snapshot(catalog)
    path = decisions(tmp_path, [(tests[0], known[0]), (tests[1], "new_whale")])
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "apply_decisions.py"), "--catalog", str(catalog),
                             "--photos", str(batch), "--decisions", str(path), "--dry-run"],
                            capture_output=True, text=True, check=True)
    assert f"{tests[1]} -> auto_0008 (new)" in result.stdout and "1 confirmed, 1 new Ids" in result.stdout
    assert snapshot(catalog) == before
