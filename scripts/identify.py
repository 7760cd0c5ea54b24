"""Identify a batch of new photos against a catalog in one command: boxes, score matrices, ensemble, submission,
candidates and the review page.

  python scripts/identify.py --catalog data/catalog --photos photos/2026-07 [--runs work/runs]

Trained runs (--runs: runs/<model>/fold<k> of scripts/train_fold.py) are applied without retraining; with none,
the members that need no training (SIFT keypoints, ALIKED local features + LightGlue; configs/identify.yaml)
score the batch. Their calibration and the new_whale threshold come from out-of-fold queries: the validation
photos of the catalog's folds.csv, or (without one) --oof-queries catalog photos left out one at a time. With
--box-model (a work folder holding bbox/fold<k>.pt, scripts/train_bbox.py), the new photos and the catalog photos
without a box in boxes.csv are boxed first.

Writes under --out (default <work-dir>/<photos folder name>): submission.csv, candidates.csv (Image, rank, Id,
score, the best catalog photo), boxes.csv, scores/, ensemble/ and report/index.html (the review page; its
decisions.csv goes to scripts/apply_decisions.py). Per-photo features are cached under <work-dir>/features, shared
by every batch of a season: a catalog grown by the last batch costs the new photos, not the whole catalog again.
"""

from __future__ import annotations

import time
from pathlib import Path

import _cli
from data.catalog import load_catalog
from data.config import load_config
from data.errors import InputError
from matching.chain import Batch, identify_steps, run_steps

SCRIPTS = Path(__file__).resolve().parent


def main() -> int:
    p = _cli.parser(__doc__, default_config="identify.yaml", data_dir=False)
    p.add_argument("--catalog", type=Path, required=True, help="catalog folder: train.csv, train/ (boxes.csv, "
                                                              "folds.csv when made)")
    p.add_argument("--photos", type=Path, required=True, help="folder of new photos (every image file in it)")
    p.add_argument("--runs", type=Path, help="trained runs to apply (default: none, the untrained members only)")
    p.add_argument("--box-model", type=Path, help="work folder with bbox/fold<k>.pt: box the new photos first")
    p.add_argument("--out", type=Path, help="this batch's results (default: <work-dir>/<photos folder name>; "
                                            "--work-dir holds the season's feature cache)")
    p.add_argument("--truth", type=Path, help="the batch's truth (Image,Id): prints its MAP@5")
    p.add_argument("--oof-queries", type=int, default=200, metavar="N",
                   help="leave-one-out catalog queries where the catalog has no folds.csv (default: %(default)s)")
    p.add_argument("--members", choices=("auto", "on", "off"), default="auto",
                   help="keypoints and local matching: auto = on without --runs, else as the runs' configs say "
                        "(default: %(default)s)")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides, complete=False)  # checked before anything runs; as written
    catalog = load_catalog(args.catalog, test_dir=args.photos)  # bad input: one line now, not in a step
    if args.runs is not None and not args.runs.is_dir():
        raise InputError(args.runs, "runs folder not found")
    out = args.out or args.work_dir / args.photos.resolve().name
    batch = Batch(args.catalog, args.photos, out, args.work_dir / "features", args.config, runs=args.runs,
                  box_model=args.box_model, truth=args.truth, oof_queries=args.oof_queries, members=args.members)
    print(f"{len(catalog.test_images)} new photos in {args.photos} against {len(catalog.train)} catalog photos "
          f"({catalog.train['Id'].nunique()} Ids) of {args.catalog}; results in {out}")
    start = time.perf_counter()
    code, timings = run_steps(identify_steps(batch, cfg), SCRIPTS)
    if code != 0:
        return code
    for name, seconds in timings:
        print(f"  {name}: {seconds:.0f} s")
    print(f"identified {len(catalog.test_images)} photos in {time.perf_counter() - start:.0f} s: "
          f"{out / 'submission.csv'}, {out / 'candidates.csv'}, {out / 'report' / 'index.html'}")
    return 0


if __name__ == "__main__":
    _cli.run(main)
