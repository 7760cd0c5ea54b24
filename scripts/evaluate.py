"""Score a submission against held-out truth: top-1 accuracy, new_whale precision/recall at rank 1, MAP@5.

The submission is Image,Id with up to five space-separated labels per image (Kaggle format); the truth is
Image,Id with the true label of every query (new_whale for an individual not in the catalog). Every truth
image must be ranked; submission images absent from the truth are ignored and counted. The last line
printed is always "MAP@5 <value>".

Examples:
  python scripts/evaluate.py --submission work/submission.csv --truth data/synthetic/truth.csv
  python scripts/make_protocol.py --data-dir ../shared/data/right_whale --out /tmp/rw --seed 0   # then
  python scripts/evaluate.py --submission /tmp/rw_work/submission.csv --truth /tmp/rw/truth.csv \\
      --json /tmp/rw_work/evaluation.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import _cli
from data.io import write_text
from matching.evaluation.evaluate import evaluate_files


def build_parser() -> argparse.ArgumentParser:
    p = _cli.Parser(description=__doc__)
    p.add_argument("--submission", type=Path, default=_cli.DEFAULT_WORK_DIR / "submission.csv",
                   help="Image,Id file with five space-separated labels per image (default: %(default)s)")
    p.add_argument("--truth", type=Path, default=_cli.DEFAULT_DATA_DIR / "truth.csv",
                   help="Image,Id file with the true label of every query (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE",
                   help="also write the metrics and counts to this JSON file (written atomically)")
    return p


def main() -> int:
    args = build_parser().parse_args()
    result = evaluate_files(args.submission, args.truth)
    print(f"submission {args.submission}, truth {args.truth}")
    for line in result.lines():
        print(line)
    if args.json is not None:
        record = {"submission": str(args.submission), "truth": str(args.truth), **result.as_dict()}
        write_text(json.dumps(record, indent=2) + "\n", args.json)
        print(f"wrote {args.json}")
    print(f"MAP@5 {result.map5:.6f}")
    return 0


if __name__ == "__main__":
    _cli.run(main)
