"""The user's catalog: ``train.csv``, the test photos, ``boxes.csv`` and ``folds.csv``, validated once, here.

Every problem found in these files is raised as one :class:`~data.errors.InputError` naming the file and
the problem on one line; code past this module may trust what it gets.
"""

from __future__ import annotations

import math
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from data.errors import InputError

NEW_WHALE = "new_whale"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
BOX_COLUMNS = ("x0", "y0", "x1", "y1")
BOX_TOLERANCE = 0.02
"""A box may overhang the image by this fraction of its side (plus one pixel) before it is an error."""

TRAIN_ONLY = -1
"""``folds.csv`` value of an image that is in the training set of every fold."""
UNUSED = -2
"""``folds.csv`` value of a ``new_whale`` photo left out of every fold (neither training nor validation)."""

Box = tuple[float, float, float, float]


def _read_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """Read a CSV as strings and check it has ``columns`` (others are dropped) and at least one row."""
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # a row longer than the header
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", index_col=False)
    except pd.errors.ParserWarning:
        raise InputError(path, "not a readable CSV (a row has more fields than the header; "
                               "quote values that hold commas)") from None
    except pd.errors.EmptyDataError:
        raise InputError(path, "empty file (expected a header: " + ",".join(columns) + ")") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(path, f"not a readable CSV ({err})") from None
    for col in columns:
        if col not in df.columns:
            found = ", ".join(map(str, df.columns))
            raise InputError(path, f"missing column '{col}' (found: {found})")
    if df.empty:
        raise InputError(path, "no rows")
    return df[list(columns)].astype(str).reset_index(drop=True)


def _line(index: int) -> int:
    """The file line of data row ``index`` (the header is line 1)."""
    return int(index) + 2


def _odd_char(text: str) -> str | None:
    """The first character that has no place in an Id (whitespace, comma, quote, control), else None."""
    for ch in text:
        if ch.isspace() or ch in ",;\"'" or unicodedata.category(ch).startswith("C"):
            return ch
    return None


def _check_ids(path: Path, ids: pd.Series) -> None:
    for i, value in ids.items():
        if value == "":
            raise InputError(path, f"line {_line(i)}: empty Id")
        bad = _odd_char(value)
        if bad is not None:
            raise InputError(path, f"line {_line(i)}: Id {value!r} has an odd character {bad!r}")


def _check_image_names(path: Path, names: pd.Series) -> None:
    for i, name in names.items():
        if name.strip() == "":
            raise InputError(path, f"line {_line(i)}: empty Image")
        if any(unicodedata.category(ch).startswith("C") for ch in name) or name != name.strip():
            raise InputError(path, f"line {_line(i)}: Image {name!r} has odd characters")
        parts = PurePosixPath(name.replace("\\", "/"))
        if parts.is_absolute() or ".." in parts.parts:
            raise InputError(path, f"line {_line(i)}: Image {name!r} must be a path inside the image folder")


def _check_unique_images(path: Path, df: pd.DataFrame, what: str = "row") -> None:
    """Duplicate rows and an Image listed twice (with different Ids when there is an Id column)."""
    dup = df[df.duplicated("Image", keep=False)]
    if dup.empty:
        return
    name = dup["Image"].iloc[0]
    rows = dup[dup["Image"] == name]
    lines = " and ".join(str(_line(i)) for i in rows.index[:2])
    more = dup["Image"].nunique() - 1
    tail = f"; {more} more images listed twice" if more else ""
    if "Id" in df.columns and rows["Id"].nunique() > 1:
        ids = ", ".join(repr(v) for v in rows["Id"].unique()[:2])
        raise InputError(path, f"image {name!r} listed twice with different Ids ({ids}; lines {lines}){tail}")
    raise InputError(path, f"duplicate {what} for image {name!r} (lines {lines}){tail}")


def read_train_csv(path: str | Path) -> pd.DataFrame:
    """``train.csv`` (``Image,Id``) as a DataFrame of those two string columns, validated."""
    path = Path(path)
    df = _read_csv(path, ["Image", "Id"])
    _check_image_names(path, df["Image"])
    _check_ids(path, df["Id"])
    _check_unique_images(path, df)
    return df


def read_image_list(path: str | Path) -> list[str]:
    """The ``Image`` column of a CSV such as ``sample_submission.csv``, validated (no blanks, no repeats)."""
    path = Path(path)
    df = _read_csv(path, ["Image"])
    _check_image_names(path, df["Image"])
    _check_unique_images(path, df)
    return df["Image"].tolist()


def _numbers(path: Path, df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The ``columns`` of ``df`` as finite floats; the first cell that is not one is an error."""
    out = pd.DataFrame(index=df.index)
    for col in columns:
        values = pd.to_numeric(df[col], errors="coerce").astype(float)
        bad = ~values.apply(math.isfinite)
        if bad.any():
            i = bad.idxmax()
            raise InputError(path, f"line {_line(i)}: {col} is not a finite number ({df[col][i]!r})")
        out[col] = values
    return out


def _find_image(name: str, folders: Sequence[Path]) -> Path | None:
    for folder in folders:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def _box_text(box: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


def _check_inside(path: Path, line: int, name: str, box: Box, size: tuple[int, int]) -> None:
    width, height = size
    x0, y0, x1, y1 = box
    tol_x, tol_y = BOX_TOLERANCE * width + 1, BOX_TOLERANCE * height + 1
    if x0 < -tol_x or y0 < -tol_y or x1 > width + tol_x or y1 > height + tol_y:
        raise InputError(path, f"line {line}: box {_box_text(box)} of {name!r} "
                               f"goes outside the image ({width}x{height})")


def read_boxes(path: str | Path, image_dir: str | Path | Sequence[str | Path] | None = None) -> dict[str, Box]:
    """``boxes.csv`` (``Image,x0,y0,x1,y1``, pascal_voc, original upright pixels) as ``{image: box}``.

    With ``image_dir`` (a folder, or folders searched in order) every image must exist there and its box
    must lie inside it, up to :data:`BOX_TOLERANCE`.
    """
    path = Path(path)
    df = _read_csv(path, ["Image", *BOX_COLUMNS])
    _check_image_names(path, df["Image"])
    _check_unique_images(path, df, what="box")
    folders: list[Path] = []
    if image_dir is not None:
        dirs = [image_dir] if isinstance(image_dir, (str, Path)) else list(image_dir)
        folders = [Path(d) for d in dirs]
    coords = _numbers(path, df, BOX_COLUMNS)
    empty = ~((coords["x0"] < coords["x1"]) & (coords["y0"] < coords["y1"]))
    outside = (coords["x1"] <= 0) | (coords["y1"] <= 0)
    for bad, problem in ((empty, "is empty (needs x0 < x1 and y0 < y1)"), (outside, "lies outside the image")):
        if bad.any():
            i = bad.idxmax()
            raise InputError(path, f"line {_line(i)}: box {_box_text(coords.loc[i])} of {df['Image'][i]!r} "
                                   f"{problem}")
    if folders:
        from data.images import image_size
    boxes: dict[str, Box] = {}
    for i, name, *box in zip(df.index, df["Image"], *(coords[c] for c in BOX_COLUMNS), strict=True):
        if folders:
            image = _find_image(name, folders)
            if image is None:
                where = " or ".join(str(f) for f in folders)
                raise InputError(path, f"line {_line(i)}: image {name!r} not found in {where}")
            _check_inside(path, _line(i), name, tuple(box), image_size(image))
        boxes[name] = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
    return boxes


def read_folds(path: str | Path, train: pd.DataFrame | None = None) -> pd.DataFrame:
    """``folds.csv`` (``Image,Id,fold``) with ``fold`` as int; with ``train``, it must list the same images."""
    path = Path(path)
    df = _read_csv(path, ["Image", "Id", "fold"])
    _check_image_names(path, df["Image"])
    _check_ids(path, df["Id"])
    _check_unique_images(path, df)
    folds = pd.to_numeric(df["fold"], errors="coerce")
    bad = folds.isna() | (folds != folds.round()) | (folds < UNUSED)
    if bad.any():
        i = bad.idxmax()
        raise InputError(path, f"line {_line(i)}: fold {df['fold'][i]!r} is not an integer >= {UNUSED}")
    trained = (folds == TRAIN_ONLY) & (df["Id"] == NEW_WHALE)
    if trained.any():
        i = trained.idxmax()
        raise InputError(path, f"line {_line(i)}: a {NEW_WHALE} photo cannot be training-only (fold {TRAIN_ONLY})")
    df["fold"] = folds.astype(int)
    if train is not None:
        missing = sorted(set(train["Image"]) - set(df["Image"]))
        extra = sorted(set(df["Image"]) - set(train["Image"]))
        if missing or extra:
            first = (missing or extra)[0]
            raise InputError(path, f"does not match train.csv ({len(missing)} catalog images missing, "
                                   f"{len(extra)} unknown images, first: {first!r}); run make_folds.py again")
        ids = df.set_index("Image")["Id"]
        changed = train[train["Id"].to_numpy() != ids.reindex(train["Image"]).to_numpy()]
        if not changed.empty:
            name = changed["Image"].iloc[0]
            raise InputError(path, f"Id of {name!r} differs from train.csv ({len(changed)} images); "
                                   "run make_folds.py again")
    return df


def _list_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, hidden files skipped), as sorted posix relative names."""
    names = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not any(s.startswith(".") for s in rel.parts):
            names.append(rel.as_posix())
    return sorted(names)


def _check_exist(listing: Path, folder: Path, names: Sequence[str]) -> None:
    missing = [n for n in names if not (folder / n).is_file()]
    if len(missing) == 1:
        raise InputError(listing, f"image {missing[0]!r} not found in {folder}")
    if missing:
        raise InputError(listing, f"{len(missing)} images not found in {folder} (first: {missing[0]!r})")


@dataclass
class Catalog:
    """A validated catalog folder: known photos with their Ids, query photos, and fluke boxes."""

    data_dir: Path
    train: pd.DataFrame
    test_images: list[str]
    boxes: dict[str, Box] = field(default_factory=dict)
    test_dir: Path | None = None  # where the query photos are: <data_dir>/test unless given

    def train_path(self, name: str) -> Path:
        return self.data_dir / "train" / name

    def test_path(self, name: str) -> Path:
        return (self.test_dir or self.data_dir / "test") / name

    def box(self, name: str) -> Box | None:
        """The box of an image, or None when it is to be used whole."""
        return self.boxes.get(name)


def _test_images(data_dir: Path, need_test: bool, check_files: bool, test_dir: Path | None = None) -> list[str]:
    listing = data_dir / "sample_submission.csv"
    if test_dir is None and listing.is_file():  # a folder given by the caller is listed, not the catalog's csv
        test_dir = data_dir / "test"
        names = read_image_list(listing)
        if check_files:
            _check_exist(listing, test_dir, names)
        return names
    test_dir = test_dir or data_dir / "test"
    if not test_dir.is_dir():
        if need_test:
            raise InputError(test_dir, "folder not found (and no sample_submission.csv lists the test images)")
        return []
    names = _list_images(test_dir)
    if not names and need_test:
        raise InputError(test_dir, "empty test folder (no image files: " + " ".join(IMAGE_SUFFIXES) + ")")
    return names


def load_catalog(data_dir: str | Path, *, need_test: bool = True, check_files: bool = True,
                 test_dir: str | Path | None = None, boxes_csv: str | Path | None = None) -> Catalog:
    """Read and validate ``train.csv``, the test images and ``boxes.csv`` (when present) of ``data_dir``.

    ``need_test``: a missing or empty ``test/`` is an error (else it gives no test images).
    ``check_files``: every listed photo must exist, and every box must lie inside its photo.
    ``test_dir``: the query photos are every image file of this folder instead of ``<data_dir>/test``
    (a new batch against the catalog, scripts/identify.py). ``boxes_csv``: the boxes file instead of
    ``<data_dir>/boxes.csv`` (it must exist when given).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(data_dir, "data folder not found")
    train_csv = data_dir / "train.csv"
    train = read_train_csv(train_csv)
    if check_files:
        _check_exist(train_csv, data_dir / "train", train["Image"].tolist())
    test_dir = None if test_dir is None else Path(test_dir)
    test_images = _test_images(data_dir, need_test, check_files, test_dir)
    if boxes_csv is not None and not Path(boxes_csv).is_file():
        raise InputError(boxes_csv, "boxes file not found")
    boxes_csv = Path(boxes_csv) if boxes_csv is not None else data_dir / "boxes.csv"
    boxes: dict[str, Box] = {}
    if boxes_csv.is_file():
        folders = [data_dir / "train", *([test_dir] if test_dir else []), data_dir / "test"] if check_files else None
        boxes = read_boxes(boxes_csv, image_dir=folders)
    return Catalog(data_dir=data_dir, train=train, test_images=test_images, boxes=boxes, test_dir=test_dir)
