import zipfile

import numpy as np
import pytest

from data.errors import InputError
from matching.matrix import ScoreMatrix, align, average, blend, load_matrix, save_matrix


def matrix(scores, query, gallery, source=None) -> ScoreMatrix:
    return ScoreMatrix(np.asarray(scores, dtype=np.float32), np.asarray(query), np.asarray(gallery), source)


BASE = matrix([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], ["q1.jpg", "q2.jpg"], ["a.jpg", "b.jpg", "c.jpg"])


def test_npz_round_trip_keeps_scores_and_names_and_stores_no_pickle(tmp_path):
    path = save_matrix(tmp_path / "scores" / "fold0_test.npz", BASE)
    loaded = load_matrix(path)
    np.testing.assert_array_equal(loaded.scores, BASE.scores)
    assert loaded.scores.dtype == np.float32
    assert list(loaded.query) == ["q1.jpg", "q2.jpg"] and list(loaded.gallery) == ["a.jpg", "b.jpg", "c.jpg"]
    with np.load(path, allow_pickle=False) as npz:  # would raise if any array needed pickle
        assert sorted(npz.files) == ["gallery", "query", "scores"]
        assert npz["query"].dtype.kind == "U" and npz["gallery"].dtype.kind == "U"


def test_object_array_file_is_refused_with_the_file_named(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, scores=BASE.scores, query=np.array(["q1.jpg", "q2.jpg"], dtype=object),
             gallery=BASE.gallery)
    with pytest.raises(InputError, match="pickled.npz"):
        load_matrix(path)


@pytest.mark.parametrize(
    ("arrays", "problem"),
    [
        ({"scores": np.zeros((2, 3), np.float32), "query": np.array(["a", "b"])}, "missing array"),
        ({"scores": np.zeros((2, 2), np.float32), "query": np.array(["a", "b"]),
          "gallery": np.array(["x", "y", "z"])}, "shape"),
        ({"scores": np.zeros((2, 1), np.float32), "query": np.array(["a", "a"]),
          "gallery": np.array(["x"])}, "twice"),
        ({"scores": np.full((1, 1), np.nan, np.float32), "query": np.array(["a"]),
          "gallery": np.array(["x"])}, "NaN"),
    ],
)
def test_malformed_matrix_files_give_one_clear_error(tmp_path, arrays, problem):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=problem) as err:
        load_matrix(path)
    assert str(err.value).startswith(str(path))


def test_missing_and_unreadable_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_matrix(tmp_path / "absent.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.npz"):
        load_matrix(tmp_path / "junk.npz")


def test_blend_aligns_rows_and_columns_by_name_before_weighting():
    shuffled = matrix([[0.6, 0.4, 0.5], [0.3, 0.1, 0.2]], ["q2.jpg", "q1.jpg"], ["c.jpg", "a.jpg", "b.jpg"])
    aligned = align(shuffled, BASE)
    np.testing.assert_allclose(aligned.scores, BASE.scores)
    other = matrix([[0.9, 0.9, 0.9], [0.0, 0.0, 0.0]], ["q1.jpg", "q2.jpg"], ["a.jpg", "b.jpg", "c.jpg"])
    out = blend([BASE, shuffled, other], [0.3, 0.3, 0.4])
    expected = 0.6 * BASE.scores + 0.4 * other.scores
    np.testing.assert_allclose(out.scores, expected, rtol=1e-6)
    assert list(out.query) == list(BASE.query) and list(out.gallery) == list(BASE.gallery)


def test_average_of_folds_is_the_mean_and_weights_are_normalised():
    half = matrix(BASE.scores / 2, BASE.query, BASE.gallery)
    np.testing.assert_allclose(average([BASE, half]).scores, BASE.scores * 0.75, rtol=1e-6)
    np.testing.assert_allclose(blend([BASE, half], [2, 2]).scores, BASE.scores * 0.75, rtol=1e-6)


def test_blend_reads_files_given_as_paths(tmp_path):
    p1 = save_matrix(tmp_path / "m1.npz", BASE)
    p2 = save_matrix(tmp_path / "m2.npz", matrix(np.ones((2, 3)), BASE.query, BASE.gallery))
    np.testing.assert_allclose(blend([p1, p2], [1, 3]).scores, 0.25 * BASE.scores + 0.75, rtol=1e-6)


def test_different_image_sets_are_an_error_naming_the_file_and_the_problem(tmp_path):
    other = matrix([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], ["q1.jpg", "q3.jpg"], ["a.jpg", "b.jpg", "c.jpg"])
    path = save_matrix(tmp_path / "densenet" / "test.npz", other)
    with pytest.raises(InputError) as err:
        blend([BASE, path], [0.5, 0.5])
    message = str(err.value)
    assert message.startswith(str(path))
    assert "'q2.jpg'" in message and "'q3.jpg'" in message and "query" in message
    fewer = matrix([[0.1, 0.2]], ["q1.jpg"], ["a.jpg", "b.jpg"], source="kernel/test.npz")
    with pytest.raises(InputError, match=r"kernel/test.npz: 1 query image\(s\) of score matrix missing"):
        average([BASE, fewer])


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match="weights"):
        blend([BASE, BASE], [1.0])
    with pytest.raises(ValueError, match="non-negative"):
        blend([BASE, BASE], [1.0, -1.0])


def test_npz_written_by_save_matrix_is_a_plain_zip_of_npy_files(tmp_path):
    path = save_matrix(tmp_path / "m.npz", BASE)
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["gallery.npy", "query.npy", "scores.npy"]
