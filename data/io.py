"""Atomic file output: every file is written to a temporary name beside it, then renamed into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from data.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target folder; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def replace_dir(tmp: str | Path, out: str | Path) -> Path:
    """Move the finished folder ``tmp`` to ``out`` (a sibling), replacing an existing ``out``; if the final
    rename fails the earlier ``out`` is put back. ``tmp`` is removed on any failure."""
    tmp, out = Path(tmp), Path(out)
    try:
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old / out.name, out)  # put the earlier folder back
                shutil.rmtree(old, ignore_errors=True)
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@contextlib.contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """A fresh hidden folder beside ``out`` to fill inside the ``with``; when the block finishes it replaces
    ``out`` (:func:`replace_dir`), on any error it is removed, so ``out`` is never left half-written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` without its index, atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def write_text(text: str, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    """``np.savez`` atomically (uncompressed; object arrays are refused so that loading never needs pickle)."""
    for name, arr in arrays.items():
        if np.asarray(arr).dtype == object:
            raise TypeError(f"array {name!r} has dtype object; store strings as a fixed-width str array")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return Path(path)


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` written by :func:`save_npz` (``allow_pickle`` stays off); a missing,
    truncated or foreign file is an :class:`InputError` naming it."""
    if not Path(path).is_file():
        raise InputError(path, "not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(path, f"is truncated or not a valid .npz file ({type(err).__name__}); "
                               "remove it and run the step that writes it again") from None


def place_file(src: Path, dst: Path, mode: str) -> str:
    """Put ``src`` at ``dst`` as a hard link, symbolic link or copy; returns which was made."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tries = {"auto": ("hardlink", "symlink", "copy")}.get(mode, (mode,))
    for kind in tries:
        try:
            if kind == "hardlink":
                os.link(src, dst)
            elif kind == "symlink":
                os.symlink(src.resolve(), dst)
            else:
                shutil.copy2(src, dst)
            return kind
        except OSError:
            if kind == tries[-1]:
                raise
    raise AssertionError("unreachable")
