import json
import subprocess
import sys
from pathlib import Path

import pytest

from data.errors import InputError
from matching.evaluation.evaluate import evaluate, evaluate_files

REPO = Path(__file__).resolve().parents[1]

# Five queries worked by hand:
#   a  truth w1         ranked w1 ...              -> found at rank 1, AP 1
#   b  truth w2         ranked new_whale w2 ...    -> rank 2, AP 1/2; new_whale said at rank 1 (wrongly)
#   c  truth new_whale  ranked new_whale w1        -> rank 1, AP 1; new_whale said at rank 1 (rightly)
#   d  truth new_whale  ranked w4 w5 w6 new_whale  -> rank 4, AP 1/4
#   e  truth w3         ranked w4 ... w8           -> not found, AP 0
#   f  (not in the truth)                          -> ignored
TRUTH = {"a.jpg": "w1", "b.jpg": "w2", "c.jpg": "new_whale", "d.jpg": "new_whale", "e.jpg": "w3"}
PREDICTED = {
    "a.jpg": ["w1", "new_whale", "w2", "w3", "w4"],
    "b.jpg": ["new_whale", "w2", "w1", "w3", "w4"],
    "c.jpg": ["new_whale", "w1"],
    "d.jpg": ["w4", "w5", "w6", "new_whale", "w1"],
    "e.jpg": ["w4", "w5", "w6", "w7", "w8"],
    "f.jpg": ["w1", "w2", "w3", "w4", "w5"],
}


def test_hand_worked_case():
    r = evaluate(TRUTH, PREDICTED)
    assert r.queries == 5
    assert r.ignored == 1
    assert r.map5 == pytest.approx((1 + 1 / 2 + 1 + 1 / 4 + 0) / 5)  # 0.55
    assert r.top1_correct == 2 and r.top1 == pytest.approx(2 / 5)  # a and c
    assert r.truth_new_whale == 2 and r.predicted_new_whale == 2 and r.new_whale_hits == 1
    assert r.new_whale_precision == pytest.approx(1 / 2)  # b and c said new_whale; only c is
    assert r.new_whale_recall == pytest.approx(1 / 2)  # c and d are new_whale; only c said so
    assert r.found_at_rank == (2, 1, 0, 1, 0) and r.not_found == 1
    assert r.map5_known == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert r.map5_new_whale == pytest.approx((1 + 1 / 4) / 2)


def test_precision_and_recall_differ_when_counts_differ():
    # q1, q2, q3 truly new; new_whale said first for q1, q2 (right) and q4, q5 (wrong); q3 missed.
    truth = {"q1": "new_whale", "q2": "new_whale", "q3": "new_whale", "q4": "w1", "q5": "w2"}
    predicted = {"q1": ["new_whale"], "q2": ["new_whale"], "q3": ["w1", "new_whale"],
                 "q4": ["new_whale", "w1"], "q5": ["new_whale", "w9", "w2"]}
    r = evaluate(truth, predicted)
    assert r.new_whale_precision == pytest.approx(2 / 4)  # 4 said new_whale first, 2 right
    assert r.new_whale_recall == pytest.approx(2 / 3)  # 3 new, 2 found at rank 1
    assert r.top1_correct == 2
    assert r.map5 == pytest.approx((1 + 1 + 1 / 2 + 1 / 2 + 1 / 3) / 5)


def test_undefined_shares_are_none_and_printed_as_na():
    r = evaluate({"a": "w1", "b": "w2"}, {"a": ["w2", "w1"], "b": ["w2"]})
    assert r.new_whale_precision is None and r.new_whale_recall is None and r.map5_new_whale is None
    assert r.map5 == pytest.approx((1 / 2 + 1) / 2)
    text = "\n".join(r.lines())
    assert "new_whale precision n/a" in text and "new_whale recall    n/a" in text
    d = r.as_dict()
    assert d["new_whale_precision"] is None and d["top1"] == pytest.approx(1 / 2)
    json.dumps(d)  # JSON-ready


def test_a_repeated_label_counts_at_its_first_rank_and_a_sixth_never():
    r = evaluate({"a": "w2", "b": "w6"}, {"a": ["w1", "w2", "w2"], "b": ["w1", "w2", "w3", "w4", "w5", "w6"]})
    assert r.found_at_rank == (0, 1, 0, 0, 0)
    assert r.map5 == pytest.approx(1 / 4)


def test_missing_prediction_in_memory_is_a_key_error():
    with pytest.raises(KeyError, match="'b'"):
        evaluate({"a": "w1", "b": "w2"}, {"a": ["w1"]})


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _files(tmp_path: Path) -> tuple[Path, Path]:
    sub = _write(tmp_path / "submission.csv",
                 "Image,Id\n" + "".join(f"{k},{' '.join(v)}\n" for k, v in PREDICTED.items()))
    truth = _write(tmp_path / "truth.csv", "Image,Id\n" + "".join(f"{k},{v}\n" for k, v in TRUTH.items()))
    return sub, truth


def test_evaluate_files_matches_the_in_memory_result(tmp_path):
    sub, truth = _files(tmp_path)
    assert evaluate_files(sub, truth) == evaluate(TRUTH, PREDICTED)


@pytest.mark.parametrize(
    ("which", "text", "message"),
    [
        ("submission", None, "file not found"),
        ("truth", None, "file not found"),
        ("submission", "Image,Label\na.jpg,w1\n", "missing column 'Id'"),
        ("truth", "Name,Id\na.jpg,w1\n", "missing column 'Image'"),
        ("submission", "Image,Id\na.jpg,w1\na.jpg,w1\n", "listed twice"),
        ("truth", "Image,Id\na.jpg,w1\na.jpg,w1\n", "duplicate row for image 'a.jpg'"),
        ("truth", "Image,Id\na.jpg,w1\na.jpg,w2\n", "listed twice with different Ids"),
        ("submission", "Image,Id\na.jpg,w1\n", "have no prediction"),
    ],
)
def test_bad_files_raise_one_line_naming_the_file(tmp_path, which, text, message):
    sub, truth = _files(tmp_path)
    target = sub if which == "submission" else truth
    if text is None:
        target.unlink()
    else:
        target.write_text(text)
    with pytest.raises(InputError, match=message) as err:
        evaluate_files(sub, truth)
    assert err.value.path == target
    assert "\n" not in str(err.value) and str(target) in str(err.value)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_script_prints_metrics_and_ends_with_the_map_line(tmp_path):
    sub, truth = _files(tmp_path)
    out = tmp_path / "m" / "metrics.json"
    res = _run("--submission", str(sub), "--truth", str(truth), "--json", str(out))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == "MAP@5 0.550000"
    text = res.stdout
    assert "top-1 accuracy      0.400000 (2 of 5)" in text
    assert "new_whale precision 0.500000 (1 of 2" in text
    assert "new_whale recall    0.500000 (1 of 2" in text
    record = json.loads(out.read_text())
    assert record["map5"] == pytest.approx(0.55) and record["queries"] == 5 and record["ignored"] == 1
    assert record["new_whale_recall"] == pytest.approx(0.5) and record["found_at_rank"] == [2, 1, 0, 1, 0]


def test_script_bad_input_is_one_line_and_exit_2(tmp_path):
    sub, truth = _files(tmp_path)
    truth.write_text("Image,Id\nzzz.jpg,w1\n")
    res = _run("--submission", str(sub), "--truth", str(truth), "--json", str(tmp_path / "m.json"))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and str(sub) in res.stderr and "zzz.jpg" in res.stderr
    assert not (tmp_path / "m.json").exists()


def test_script_help_has_an_example():
    res = _run("--help")
    assert res.returncode == 0 and "python scripts/evaluate.py --submission" in res.stdout
