import numpy as np
import pandas as pd
import pytest

from data.io import atomic_path, load_npz, save_npz, write_csv


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "out" / "file.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_atomic_path_replaces_an_existing_file_only_on_success(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise ValueError
    assert target.read_text() == "old"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_npz_round_trip_without_pickle_and_object_arrays_refused(tmp_path):
    scores = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    names = np.array(["a.jpg", "bb.jpg", "c.jpg"])
    save_npz(tmp_path / "m.npz", scores=scores, query=names)
    loaded = load_npz(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded["scores"], scores)
    assert loaded["query"].tolist() == names.tolist()
    with pytest.raises(TypeError, match="object"):
        save_npz(tmp_path / "bad.npz", names=np.array(["a", None], dtype=object))
    assert not (tmp_path / "bad.npz").exists()


def test_write_csv_has_no_index_column(tmp_path):
    write_csv(pd.DataFrame({"Image": ["a.jpg"], "Id": ["w_1"]}), tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().splitlines() == ["Image,Id", "a.jpg,w_1"]


def test_replace_dir_swaps_a_finished_folder_in_and_keeps_the_old_one_on_failure(tmp_path, monkeypatch):
    import os

    from data import io

    out, new = tmp_path / "out", tmp_path / "new"
    out.mkdir()
    (out / "a.txt").write_text("old")
    new.mkdir()
    (new / "a.txt").write_text("new")
    io.replace_dir(new, out)
    assert (out / "a.txt").read_text() == "new" and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    again = tmp_path / "again"
    again.mkdir()
    real = os.replace

    def failing(src, dst):
        if str(src) == str(again):
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", failing)
    with pytest.raises(OSError):
        io.replace_dir(again, out)
    assert (out / "a.txt").read_text() == "new" and not again.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
