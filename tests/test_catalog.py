"""Catalog reading: every kind of bad input gives one InputError naming the file and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data.catalog import NEW_WHALE, load_catalog, read_boxes, read_folds, read_train_csv
from data.errors import InputError

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_image(path: Path, width: int = 40, height: int = 30, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def make_data_dir(root: Path, rows: list[tuple[str, str]], test: list[str] = ("q1.jpg",)) -> Path:
    """A catalog folder with real (tiny) image files for every row and test name."""
    lines = ["Image,Id"] + [f"{image},{whale}" for image, whale in rows]
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    for image, _ in rows:
        write_image(root / "train" / image)
    for name in test:
        write_image(root / "test" / name)
    return root


ROWS = [("a.jpg", "w_1"), ("b.jpg", "w_1"), ("c.jpg", NEW_WHALE), ("d.jpg", "CRC-21436")]


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_load_catalog_reads_train_rows_test_folder_and_paths(tmp_path):
    data = make_data_dir(tmp_path / "cat", ROWS, test=["q2.png", "q1.jpg", "sub/q3.jpg"])
    (data / "test" / "notes.txt").write_text("not an image")
    cat = load_catalog(data)
    assert cat.train["Image"].tolist() == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert cat.train["Id"].tolist() == ["w_1", "w_1", NEW_WHALE, "CRC-21436"]
    assert cat.test_images == ["q1.jpg", "q2.png", "sub/q3.jpg"]
    assert cat.boxes == {} and cat.box("a.jpg") is None
    assert cat.train_path("a.jpg") == data / "train" / "a.jpg"
    assert cat.test_path("sub/q3.jpg").is_file()


def test_sample_submission_lists_the_test_images_in_its_order(tmp_path):
    data = make_data_dir(tmp_path, ROWS, test=["x.jpg", "y.jpg", "z.jpg"])
    (data / "sample_submission.csv").write_text("Image,Id\ny.jpg,new_whale\nx.jpg,new_whale\n")
    assert load_catalog(data).test_images == ["y.jpg", "x.jpg"]


def test_sample_submission_naming_a_missing_photo_is_an_error(tmp_path):
    data = make_data_dir(tmp_path, ROWS, test=["x.jpg"])
    (data / "sample_submission.csv").write_text("Image,Id\nx.jpg,new_whale\ngone.jpg,new_whale\n")
    msg = error_of(load_catalog, data)
    assert msg.startswith(str(data / "sample_submission.csv")) and "'gone.jpg' not found" in msg


def test_missing_column_names_the_file_the_column_and_what_was_found(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("Image,Label\na.jpg,w_1\n")
    assert error_of(read_train_csv, path) == f"{path}: missing column 'Id' (found: Image, Label)"


def test_missing_train_csv_and_empty_file_are_errors(tmp_path):
    assert error_of(read_train_csv, tmp_path / "none.csv").endswith("none.csv: file not found")
    (tmp_path / "empty.csv").write_text("")
    assert "empty file" in error_of(read_train_csv, tmp_path / "empty.csv")


def test_catalog_without_rows_is_an_error(tmp_path):
    (tmp_path / "train.csv").write_text("Image,Id\n")
    assert error_of(read_train_csv, tmp_path / "train.csv") == f"{tmp_path / 'train.csv'}: no rows"


def test_duplicate_row_is_an_error_naming_image_and_lines(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("Image,Id\na.jpg,w_1\nb.jpg,w_2\na.jpg,w_1\n")
    msg = error_of(read_train_csv, path)
    assert msg == f"{path}: duplicate row for image 'a.jpg' (lines 2 and 4)"


def test_image_listed_twice_with_different_ids_is_an_error(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("Image,Id\na.jpg,w_1\na.jpg,w_2\nb.jpg,w_3\nb.jpg,w_3\n")
    msg = error_of(read_train_csv, path)
    assert "'a.jpg' listed twice with different Ids ('w_1', 'w_2'" in msg and "1 more images" in msg


@pytest.mark.parametrize("bad_id", ["w_1 2", '"w_1,2"', "w_1\t", "w_\x07bell", '" w_1"', ""])
def test_id_with_odd_characters_or_empty_is_an_error(tmp_path, bad_id):
    path = tmp_path / "train.csv"
    path.write_text(f"Image,Id\na.jpg,w_ok\nb.jpg,{bad_id}\n")
    msg = error_of(read_train_csv, path)
    assert msg.startswith(f"{path}: line 3: ") and ("odd character" in msg or "empty Id" in msg)


def test_sane_ids_of_other_catalogs_are_accepted(tmp_path):
    path = tmp_path / "train.csv"
    ids = ["w_f48451c", NEW_WHALE, "CRC-21436", "63ac7b45-f47a-4bd3-8141-e9536a7a6294", "Baleine_Été.2"]
    path.write_text("Image,Id\n" + "".join(f"{i}.jpg,{w}\n" for i, w in enumerate(ids)))
    assert read_train_csv(path)["Id"].tolist() == ids


def test_spreadsheet_byte_order_mark_and_extra_columns_are_accepted(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes("\ufeffImage,Id,Note\na.jpg,w_1,seen twice\n".encode())
    train = read_train_csv(path)
    assert list(train.columns) == ["Image", "Id"] and train.values.tolist() == [["a.jpg", "w_1"]]


def test_unquoted_comma_in_a_row_is_an_error(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("Image,Id\na.jpg,w_1,2\n")
    assert error_of(read_train_csv, path).startswith(f"{path}: not a readable CSV")


def test_image_name_escaping_the_folder_is_an_error(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("Image,Id\n../secret.jpg,w_1\n")
    assert "must be a path inside the image folder" in error_of(read_train_csv, path)


def test_one_missing_photo_is_named(tmp_path):
    data = make_data_dir(tmp_path, ROWS)
    (data / "train" / "b.jpg").unlink()
    assert error_of(load_catalog, data) == f"{data / 'train.csv'}: image 'b.jpg' not found in {data / 'train'}"


def test_many_missing_photos_give_the_count_and_the_first(tmp_path):
    data = make_data_dir(tmp_path, ROWS)
    for name in ("b.jpg", "c.jpg", "d.jpg"):
        (data / "train" / name).unlink()
    msg = error_of(load_catalog, data)
    assert msg == f"{data / 'train.csv'}: 3 images not found in {data / 'train'} (first: 'b.jpg')"
    assert len(load_catalog(data, check_files=False).train) == 4


def test_empty_or_missing_test_folder_is_an_error_only_when_test_images_are_needed(tmp_path):
    data = make_data_dir(tmp_path, ROWS, test=[])
    msg = error_of(load_catalog, data)
    assert msg.startswith(f"{data / 'test'}: folder not found")
    (data / "test").mkdir()
    assert error_of(load_catalog, data).startswith(f"{data / 'test'}: empty test folder")
    assert load_catalog(data, need_test=False).test_images == []


def test_missing_data_folder_is_an_error(tmp_path):
    assert error_of(load_catalog, tmp_path / "nope") == f"{tmp_path / 'nope'}: data folder not found"


def test_boxes_csv_is_read_into_the_catalog(tmp_path):
    data = make_data_dir(tmp_path, ROWS)  # photos are 40x30
    (data / "boxes.csv").write_text("Image,x0,y0,x1,y1\na.jpg,1,2,39.5,30\nq1.jpg,0,0,40,30\n")
    cat = load_catalog(data)
    assert cat.box("a.jpg") == (1.0, 2.0, 39.5, 30.0) and cat.box("q1.jpg") == (0.0, 0.0, 40.0, 30.0)
    assert cat.box("b.jpg") is None


@pytest.mark.parametrize("body, problem", [
    ("Image,x0,y0,x1\na.jpg,1,2,3\n", "missing column 'y1' (found: Image, x0, y0, x1)"),
    ("Image,x0,y0,x1,y1\na.jpg,1,two,3,4\n", "line 2: y0 is not a finite number ('two')"),
    ("Image,x0,y0,x1,y1\na.jpg,1,2,3,inf\n", "line 2: y1 is not a finite number ('inf')"),
    ("Image,x0,y0,x1,y1\na.jpg,5,2,5,4\n", "line 2: box (5, 2, 5, 4) of 'a.jpg' is empty"),
    ("Image,x0,y0,x1,y1\na.jpg,1,9,3,4\n", "line 2: box (1, 9, 3, 4) of 'a.jpg' is empty"),
    ("Image,x0,y0,x1,y1\na.jpg,-9,1,-2,4\n", "line 2: box (-9, 1, -2, 4) of 'a.jpg' lies outside the image"),
    ("Image,x0,y0,x1,y1\na.jpg,1,1,3,4\na.jpg,1,1,3,4\n", "duplicate box for image 'a.jpg' (lines 2 and 3)"),
])
def test_bad_boxes_csv_is_an_error(tmp_path, body, problem):
    path = tmp_path / "boxes.csv"
    path.write_text(body)
    msg = error_of(read_boxes, path)
    assert msg.startswith(f"{path}: {problem}")


def test_box_outside_its_photo_is_an_error_but_a_small_overhang_is_not(tmp_path):
    write_image(tmp_path / "train" / "a.jpg", width=100, height=50)
    path = tmp_path / "boxes.csv"
    path.write_text("Image,x0,y0,x1,y1\na.jpg,-2,0,102.5,51\n")
    assert read_boxes(path, tmp_path / "train")["a.jpg"] == (-2.0, 0.0, 102.5, 51.0)
    path.write_text("Image,x0,y0,x1,y1\na.jpg,10,5,90,80\n")
    msg = error_of(read_boxes, path, tmp_path / "train")
    assert msg == f"{path}: line 2: box (10, 5, 90, 80) of 'a.jpg' goes outside the image (100x50)"


def test_box_of_a_photo_in_no_folder_is_an_error(tmp_path):
    data = make_data_dir(tmp_path, ROWS)
    (data / "boxes.csv").write_text("Image,x0,y0,x1,y1\nghost.jpg,1,1,3,4\n")
    msg = error_of(load_catalog, data)
    assert msg.startswith(f"{data / 'boxes.csv'}: line 2: image 'ghost.jpg' not found in {data / 'train'} or ")


def test_folds_csv_is_read_with_integer_folds_and_checked_against_the_catalog(tmp_path):
    path = tmp_path / "folds.csv"
    path.write_text("Image,Id,fold\na.jpg,w_1,-1\nb.jpg,w_1,0\nc.jpg,new_whale,-2\n")
    train = read_folds(path)[["Image", "Id"]]
    assert read_folds(path, train)["fold"].tolist() == [-1, 0, -2]
    other = pd.DataFrame({"Image": ["a.jpg", "b.jpg", "z.jpg"], "Id": ["w_1", "w_1", "w_9"]})
    msg = error_of(read_folds, path, other)
    assert msg.startswith(f"{path}: does not match train.csv (1 catalog images missing, 1 unknown images, "
                          "first: 'z.jpg')")


@pytest.mark.parametrize("body, problem", [
    ("Image,Id,fold\na.jpg,w_1,x\n", "line 2: fold 'x' is not an integer >= -2"),
    ("Image,Id,fold\na.jpg,w_1,1.5\n", "line 2: fold '1.5' is not an integer >= -2"),
    ("Image,Id,fold\na.jpg,w_1,-3\n", "line 2: fold '-3' is not an integer >= -2"),
    ("Image,Id,fold\na.jpg,new_whale,-1\n", "line 2: a new_whale photo cannot be training-only"),
    ("Image,Id\na.jpg,w_1\n", "missing column 'fold' (found: Image, Id)"),
])
def test_bad_folds_csv_is_an_error(tmp_path, body, problem):
    path = tmp_path / "folds.csv"
    path.write_text(body)
    assert error_of(read_folds, path).startswith(f"{path}: {problem}")


def test_folds_csv_with_an_id_changed_since_is_an_error(tmp_path):
    path = tmp_path / "folds.csv"
    path.write_text("Image,Id,fold\na.jpg,w_1,-1\nb.jpg,w_1,0\n")
    train = read_folds(path)[["Image", "Id"]].assign(Id=["w_1", "w_2"])
    assert "Id of 'b.jpg' differs from train.csv" in error_of(read_folds, path, train)


def test_real_kaggle_labels_pass_validation():
    path = REAL_DATA / "kaggle_labels" / "humpback2019_train.csv"
    if not path.is_file():
        pytest.skip(f"real Kaggle labels not found at {path}")
    train = read_train_csv(path)
    assert len(train) == 25_361 and train["Id"].nunique() == 5_005
    assert (train["Id"] == NEW_WHALE).sum() == 9_664


def test_real_humpback_flukes_catalog_loads_with_every_photo_present():
    data = REAL_DATA / "humpback_flukes"
    if not (data / "train.csv").is_file():
        pytest.skip(f"real humpback photos not found at {data}")
    cat = load_catalog(data, need_test=False)
    assert len(cat.train) == 29 and cat.train["Id"].nunique() == 23
    assert all(cat.train_path(name).is_file() for name in cat.train["Image"])
