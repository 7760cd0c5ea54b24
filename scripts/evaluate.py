"""MAP@5 of a submission against the truth (Kaggle Humpback 2019 metric); the value is the last line.

  python scripts/evaluate.py --submission work/submission.csv --truth data/synthetic/truth.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _cli
from matching.submission import evaluate_submission


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--submission", type=Path, default=_cli.DEFAULT_WORK_DIR / "submission.csv",
                   help="Image,Id file with five space-separated labels per image (default: %(default)s)")
    p.add_argument("--truth", type=Path, default=_cli.DEFAULT_DATA_DIR / "truth.csv",
                   help="Image,Id file with the true label of every query (default: %(default)s)")
    args = p.parse_args()
    print(f"MAP@5 {evaluate_submission(args.submission, args.truth):.6f}")
    return 0


if __name__ == "__main__":
    _cli.run(main)
