"""The match-review page: one static HTML file to confirm or reject the matches of a submission.

Reads <work-dir>/submission.csv, the blended matrices <work-dir>/ensemble/{test,oof}.npz that
scripts/final_ensemble.py writes (else <work-dir>/scores/<model>/{test,oof}.npz, blended with the weights of
the ensemble config as final_ensemble.py blends them), the training metrics
<work-dir>/runs/<model>/fold<k>/<size>px/metrics.csv, and from --data-dir train.csv, the photos, boxes.csv
and truth.csv when present. Writes <work-dir>/report/index.html and its thumbnails in
<work-dir>/report/thumbs/ (or, with --embed, one file with everything inside).

Per query: its crop, then the five labels of the submission, each whale shown by its best-scoring catalog
photo, new_whale as its own tile; green/red where truth.csv knows the answer. Filters (only wrong, new_whale
at rank 1, best-score range), sort by confidence, keys j/k or arrows to move, 1-5 / x to confirm or reject,
s to skip (kept in the browser, downloadable as decisions.csv, for scripts/apply_decisions.py); m shows the
keypoints the local matcher paired between the query and each candidate, when a local member scored them.
Open the file in any browser; no server needed.

  python scripts/report.py && xdg-open work/report/index.html
  python scripts/report.py --limit 500 --embed        # a single shareable file
"""

from __future__ import annotations

from pathlib import Path

import _cli
from matching.review.build import build_report


def main() -> int:
    p = _cli.parser(__doc__, default_config="ensemble.yaml")
    _cli.catalog_flags(p)
    p.add_argument("--truth", type=Path, help="truth of the queries (default: <data-dir>/truth.csv when present)")
    p.add_argument("--runs", type=Path, help="trained runs whose curves are drawn (default: <work-dir>/runs)")
    p.add_argument("--match-lines", type=int, default=200, metavar="N",
                   help="match lines of the local member (key m) for the first N queries, when a local member "
                        "scored them (default: %(default)s; 0: none)")
    p.add_argument("--submission", type=Path, help="submission file (default: <work-dir>/submission.csv)")
    p.add_argument("--out", type=Path, help="report folder (default: <work-dir>/report)")
    p.add_argument("--test-matrix", type=Path,
                   help="a blended test x catalog matrix (.npz); default: <work-dir>/ensemble/test.npz when it exists")
    p.add_argument("--oof-matrix", type=Path, help="an already blended out-of-fold matrix (.npz)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N queries of the submission")
    p.add_argument("--embed", action="store_true",
                   help="embed thumbnails in the HTML as base64 (one self-contained file; large for many queries)")
    args = p.parse_args()
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    cfg = _cli.config_from(args)["ensemble"]
    print(f"reading {args.work_dir} and {args.data_dir}")
    result = build_report(args.data_dir, args.work_dir, weights=cfg["weights"], out_dir=args.out,
                          submission=args.submission, test_matrix=args.test_matrix, oof_matrix=args.oof_matrix,
                          limit=args.limit, embed=args.embed, test_dir=args.test_dir, boxes_csv=args.boxes,
                          truth_path=args.truth, runs_dir=args.runs, match_queries=args.match_lines)
    for note in result.notes:
        print(f"note: {note}")
    if result.map5 is not None:
        print(f"MAP@5 {result.map5:.4f} over {result.with_truth} queries with truth")
    print(f"training curves: {', '.join(result.curves) or 'none'}; "
          f"score distributions: {', '.join(result.histogram_panels) or 'none'}")
    print(f"wrote {result.page} ({result.queries} queries, {result.thumbnails} thumbnails)")
    return 0


if __name__ == "__main__":
    _cli.run(main)
