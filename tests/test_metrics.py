import pytest

from data.errors import InputError
from matching.evaluation.submission import evaluate_submission, read_submission, read_truth, write_submission
from matching.metrics import average_precision_at_5, map_at_5


@pytest.mark.parametrize(
    ("truth", "predicted", "expected"),
    [
        ("w1", ["w1", "w2", "w3", "w4", "w5"], 1.0),
        ("w3", ["w1", "w2", "w3", "w4", "w5"], 1 / 3),
        ("w5", ["w1", "w2", "w3", "w4", "w5"], 1 / 5),
        ("w6", ["w1", "w2", "w3", "w4", "w5"], 0.0),
        ("w6", ["w1", "w2", "w3", "w4", "w5", "w6"], 0.0),  # a sixth label never counts
        ("new_whale", ["w1", "new_whale"], 0.5),
        ("w2", ["w1", "w2", "w2"], 0.5),  # a repeated label scores at its first position
    ],
)
def test_average_precision_is_one_over_the_rank_of_the_first_correct_label(truth, predicted, expected):
    assert average_precision_at_5(truth, predicted) == pytest.approx(expected)


def test_map_at_5_averages_over_queries():
    truth = ["a", "b", "c", "new_whale"]
    predicted = [["a", "x"], ["x", "y", "b"], ["x", "y", "z", "u", "v"], ["x", "new_whale"]]
    assert map_at_5(truth, predicted) == pytest.approx((1 + 1 / 3 + 0 + 1 / 2) / 4)


def test_map_at_5_refuses_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="2 truth labels but 1"):
        map_at_5(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="no queries"):
        map_at_5([], [])


def test_submission_round_trip_in_kaggle_format(tmp_path):
    ranked = [["w_1", "new_whale", "w_2", "w_3", "w_4"], ["new_whale", "w_9"]]
    path = write_submission(tmp_path / "out" / "submission.csv", ["a.jpg", "b.jpg"], ranked)
    assert path.read_text().splitlines() == ["Image,Id", "a.jpg,w_1 new_whale w_2 w_3 w_4", "b.jpg,new_whale w_9"]
    assert read_submission(path) == {"a.jpg": ranked[0], "b.jpg": ranked[1]}
    assert [p.name for p in path.parent.iterdir()] == ["submission.csv"]  # no temporary left behind


def test_write_submission_refuses_labels_that_would_break_the_format(tmp_path):
    with pytest.raises(ValueError, match="space"):
        write_submission(tmp_path / "s.csv", ["a.jpg"], [["w 1"]])
    with pytest.raises(ValueError, match="6 labels"):
        write_submission(tmp_path / "s.csv", ["a.jpg"], [["w1", "w2", "w3", "w4", "w5", "w6"]])
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Image,Label\na.jpg,w1\n", "missing column 'Id'"),
        ("Image,Id\na.jpg,w1\na.jpg,w2\n", "line 3: image 'a.jpg' listed twice"),
        ("Image,Id\na.jpg,\n", "line 2: image 'a.jpg' has no labels"),
        ("Image,Id\na.jpg,w1 w2 w3 w4 w5 w6\n", "6 labels"),
        ("", "empty file"),
    ],
)
def test_bad_submission_files_give_one_line_naming_file_and_problem(tmp_path, text, problem):
    path = tmp_path / "sub.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=problem) as err:
        read_submission(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_evaluate_submission_scores_against_truth_and_requires_every_truth_image(tmp_path):
    truth = tmp_path / "truth.csv"
    truth.write_text("Image,Id\na.jpg,w_1\nb.jpg,new_whale\n")
    sub = write_submission(tmp_path / "sub.csv", ["a.jpg", "b.jpg", "c.jpg"],
                           [["w_2", "w_1"], ["new_whale"], ["w_3"]])
    assert read_truth(truth) == {"a.jpg": "w_1", "b.jpg": "new_whale"}
    assert evaluate_submission(sub, truth) == pytest.approx((0.5 + 1.0) / 2)
    partial = write_submission(tmp_path / "partial.csv", ["a.jpg"], [["w_1"]])
    with pytest.raises(InputError, match="1 image.*no prediction.*'b.jpg'"):
        evaluate_submission(partial, truth)


def test_truth_file_with_two_labels_for_an_image_is_refused(tmp_path):
    truth = tmp_path / "truth.csv"
    truth.write_text("Image,Id\na.jpg,w_1 w_2\n")
    with pytest.raises(InputError, match="truth.csv"):
        read_truth(truth)
