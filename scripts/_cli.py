"""Shared command-line plumbing for the scripts: the common flags and one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from data.threads import passive_waits  # noqa: E402

passive_waits()  # before torch and numpy load their thread pools

from data.config import apply_override, load_config  # noqa: E402
from data.errors import InputError  # noqa: E402
from data.settings import Settings  # noqa: E402

DEFAULT_DATA_DIR = REPO_ROOT / "data" / "synthetic"
DEFAULT_WORK_DIR = REPO_ROOT / "work"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser with ``--threads``: parsing sizes the thread pools (:func:`data.threads.configure_threads`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        self.add_argument("--threads", type=int, metavar="N",
                          help="threads of every CPU pool (torch, OpenCV, BLAS); default: the CPUs this process may "
                               "use (its affinity)")

    def parse_args(self, *args, **kwargs):
        from data.threads import configure_threads

        parsed = super().parse_args(*args, **kwargs)
        if parsed.threads is not None and parsed.threads < 1:
            self.error("--threads must be at least 1")
        parsed.threads = configure_threads(parsed.threads)
        return parsed


def parser(description: str, default_config: str | None = None, data_dir: bool = True) -> argparse.ArgumentParser:
    """A :class:`Parser` with ``--data-dir`` (unless ``data_dir`` is false), ``--work-dir``, ``--config`` and
    ``--set``."""
    p = Parser(description=description)
    if data_dir:
        p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                       help="catalog folder with train.csv, train/, test/ (and boxes.csv, folds.csv when made); "
                            "default: %(default)s")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                   help="where runs/, scores/, submission.csv and reports go; default: %(default)s")
    if default_config is not None:
        p.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / default_config,
                       help="YAML config (may inherit from another with 'base:'); default: %(default)s")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, dotted for nesting (e.g. --set train.seed=3); repeatable")
    return p


def config_from(args: argparse.Namespace, schema: type = Settings) -> dict:
    """``--config`` with its ``--set`` overrides, checked against ``schema`` (:mod:`data.settings`) and with every
    default filled in; without ``--config``, only the overrides (checked, no defaults added)."""
    path = getattr(args, "config", None)
    if path is None:
        cfg: dict = {}
        for item in args.overrides:
            apply_override(cfg, item, schema)
        return cfg
    return load_config(path, args.overrides, schema)


def run(main: Callable[[], int | None]) -> None:
    """Run ``main``; bad input ends with one line on stderr and exit status 2."""
    try:
        code = main()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def catalog_flags(p: argparse.ArgumentParser) -> None:
    """``--test-dir`` and ``--boxes``: the query photos and the boxes file, when they are not the catalog's own
    ``test/`` and ``boxes.csv`` (a new batch of photos against the catalog, as scripts/identify.py runs it)."""
    p.add_argument("--test-dir", type=Path,
                   help="the query photos: every image of this folder (default: <data-dir>/test, or the images "
                        "its sample_submission.csv lists)")
    p.add_argument("--boxes", type=Path, help="boxes CSV (default: <data-dir>/boxes.csv when present)")


def load_catalog(args: argparse.Namespace, **kwargs):
    """The catalog of ``--data-dir`` with the ``--test-dir`` and ``--boxes`` of :func:`catalog_flags`."""
    from data.catalog import load_catalog as load

    return load(args.data_dir, test_dir=getattr(args, "test_dir", None), boxes_csv=getattr(args, "boxes", None),
                **kwargs)
