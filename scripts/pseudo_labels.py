"""Pseudo-labels: an extended catalog with the test photos whose best whale in a blended test matrix scores above
a confidence threshold (the 5th place retrained on about 3.2k such photos).

Reads the blended matrices of scripts/final_ensemble.py (<work-dir>/ensemble/test.npz and oof.npz) and train.csv
of --data-dir. The threshold is the lowest one whose precision on the out-of-fold rows (best whale right) is
at least --precision, or --threshold. Prints the precision table, writes it to <out>/threshold_precision.csv,
and writes a new data folder --out (default <work-dir>/pseudo): train.csv (catalog + pseudo rows), train/,
test/, boxes.csv, folds.csv (pseudo rows at fold -1: training only), pseudo.csv (Image,Id,score).

Examples:
  python scripts/pseudo_labels.py --precision 0.95
  python scripts/pseudo_labels.py --threshold 0.9 --out data/humpback_pseudo --force
  python scripts/train_fold.py 0 --data-dir work/pseudo        # retrain on the extended catalog
"""

from __future__ import annotations

from pathlib import Path

import _cli
from data.catalog import read_train_csv
from data.errors import InputError
from data.io import write_csv
from matching.matrix import load_matrix
from matching.ranking.pseudo import choose_threshold, pseudo_labels, threshold_precision, write_pseudo_catalog


def main() -> int:
    p = _cli.parser(__doc__)
    p.add_argument("--matrix", type=Path, help="blended test matrix (default: <work-dir>/ensemble/test.npz)")
    p.add_argument("--oof", type=Path, help="blended out-of-fold matrix (default: <work-dir>/ensemble/oof.npz)")
    p.add_argument("--precision", type=float, default=0.95,
                   help="lowest out-of-fold precision the threshold may have (default: %(default)s)")
    p.add_argument("--threshold", type=float, help="use this threshold instead of choosing one by precision")
    p.add_argument("--out", type=Path, help="the extended data folder to write (default: <work-dir>/pseudo)")
    p.add_argument("--force", action="store_true", help="replace an existing pseudo-label folder at --out")
    args = p.parse_args()
    if not 0 < args.precision <= 1:
        raise InputError(None, f"--precision must be in (0, 1], not {args.precision}")
    test_path = args.matrix or args.work_dir / "ensemble" / "test.npz"
    oof_path = args.oof or args.work_dir / "ensemble" / "oof.npz"
    out = args.out or args.work_dir / "pseudo"
    train = read_train_csv(args.data_dir / "train.csv")
    labels = dict(zip(train["Image"], train["Id"]))
    test = load_matrix(test_path)
    print(f"read {test_path} ({len(test.query)} test x {len(test.gallery)} catalog images)")
    threshold = args.threshold
    table = None
    if oof_path.is_file():
        oof = load_matrix(oof_path)
        table = threshold_precision(oof, labels)
        print(f"out-of-fold precision of the best whale above each threshold ({oof_path}):")
        print(table.iloc[::5].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        if threshold is None:
            threshold = choose_threshold(table, args.precision)
            if threshold is None:
                raise InputError(oof_path, f"no threshold reaches precision {args.precision} out of fold; "
                                           "lower --precision or give --threshold")
            row = table[table["threshold"] == threshold].iloc[0]
            print(f"threshold {threshold:.2f}: out-of-fold precision {row['precision']:.3f} "
                  f"on {int(row['selected'])} of {len(oof.query)} queries")
    elif threshold is None:
        raise InputError(oof_path, "not found: without out-of-fold matrices give --threshold")
    pseudo = pseudo_labels(test, labels, threshold)
    print(f"{len(pseudo)} of {len(test.query)} test photos above {threshold:.3f} "
          f"({pseudo['Id'].nunique() if len(pseudo) else 0} whales)")
    links = write_pseudo_catalog(args.data_dir, out, pseudo, force=args.force)
    if table is not None:
        write_csv(table, out / "threshold_precision.csv")
    print(f"wrote {out} (train.csv with {len(train) + len(pseudo)} rows; photos placed: "
          + ", ".join(f"{v} {k}" for k, v in links.items() if v) + ")")
    return 0


if __name__ == "__main__":
    _cli.run(main)
