"""Cosine nearest-neighbour baselines (nothing trained): raw grey pixels, or frozen ImageNet branch features.

--features pixels (default): test photos against the catalog on size x size grey thumbnails, whole photo
and true fluke crop (needs truth.csv and truth_boxes.csv, as written by make_synthetic.py; the threshold is
tuned on the truth itself, an upper bound). The last line is ``MAP@5 <value>`` of the whole photo (of the
crop with --crop).

--features lite0: frozen ImageNet EfficientNet-Lite0 branch features (offline weights; test-time crop with
boxes.csv when present), every photo computed once. Out-of-fold over the folds of folds.csv: protocol
"fold" scores each fold's validation photos against that fold's training photos that are not new_whale
(as training-time validation); "catalog" against every catalog photo but themselves (as the out-of-fold
matrices of score_matrix.py). One new_whale threshold is tuned over all out-of-fold photos (ranking mode
"sum", as final_ensemble.py) and applied to test/ against truth.csv when both exist. The last line is
``MAP@5 <value>``: the test MAP@5 of the first protocol, or its out-of-fold MAP@5 without truth.csv.

Examples:
  python scripts/baseline.py --data-dir data/synthetic
  python scripts/baseline.py --data-dir /tmp/rw --features lite0 --size 224
  python scripts/baseline.py --data-dir /tmp/rw --features lite0 --size 192 \\
      --reuse work/features/real_cpu_siamese --json work/baseline.json   # features cached by a frozen-branch run
"""

from __future__ import annotations

import json
from pathlib import Path

import _cli
from data.io import write_text
from matching.evaluation.baseline import (
    PROTOCOLS,
    FeatureBaselineResult,
    branch_features,
    cached_run_features,
    feature_baseline,
    needed_images,
    raw_pixel_baseline,
    same_features,
)


def pixels(args) -> float:
    print(f"reading {args.data_dir}/: train.csv, truth.csv, truth_boxes.csv, train/, test/")
    size = args.size or 32
    results = {}
    for name, crop in (("whole photo", False), ("fluke crop", True)):
        r = raw_pixel_baseline(args.data_dir, crop=crop, size=size, progress=True)
        results[crop] = r
        print(f"{name}: MAP@5 {r.map5:.4f} ({r.queries} queries x {r.gallery} gallery photos, "
              f"{size}x{size} grey, new_whale below cosine {r.threshold:.3f})")
    return results[args.crop].map5


def _record(r: FeatureBaselineResult) -> dict:
    return {"protocol": r.protocol, "mode": r.mode, "folds": r.folds, "oof_map5": r.oof_map5,
            "threshold": r.threshold, "oof_queries": r.oof_queries,
            "fold_map5": {str(k): v for k, v in r.fold_map5.items()}, "gallery": r.gallery,
            "test": None if r.test is None else r.test.as_dict(), "test_oracle_map5": r.test_oracle_map5}


def lite0(args) -> float:
    from data.catalog import load_catalog

    size = args.size or 224
    with_test = (args.data_dir / "truth.csv").is_file() and (args.data_dir / "test").is_dir()
    catalog = load_catalog(args.data_dir, need_test=with_test)
    known = {}
    if args.reuse is not None:
        known = cached_run_features(args.reuse)
        if same_features(catalog, known, size):
            print(f"reusing {len(known)} cached features of {args.reuse} (equal to fresh frozen features on a sample)")
        else:
            print(f"note: the features under {args.reuse} are not the frozen ImageNet ones at {size} px: recomputed")
            known = {}
    keys = needed_images(catalog, with_test)
    print(f"frozen ImageNet efficientnet_lite0 features at {size} px: {len([k for k in keys if k not in known])} "
          f"to compute, {len(keys)} photos in all")
    feats = branch_features(catalog, keys, size, known=known)
    results = [feature_baseline(args.data_dir, size=size, protocol=p, features=feats) for p in args.protocols]
    for r in results:
        if r.oof_map5 is not None:
            per_fold = ", ".join(f"fold {k} {v:.4f}" for k, v in r.fold_map5.items())
            print(f"out-of-fold ({r.protocol} protocol): MAP@5 {r.oof_map5:.4f} over {r.oof_queries} validation "
                  f"photos, new_whale below cosine {r.threshold:.4f}; per fold, own threshold: {per_fold}")
        if r.test is not None:
            t = r.test
            nw_p = "n/a" if t.new_whale_precision is None else f"{t.new_whale_precision:.4f}"
            nw_r = "n/a" if t.new_whale_recall is None else f"{t.new_whale_recall:.4f}"
            print(f"test ({r.protocol} threshold): MAP@5 {t.map5:.4f}, top-1 {t.top1:.4f}, new_whale precision "
                  f"{nw_p} recall {nw_r} ({t.queries} queries x {r.gallery} catalog photos); "
                  f"threshold tuned on the test truth: MAP@5 {r.test_oracle_map5:.4f}")
    if args.json is not None:
        write_text(json.dumps({"features": "efficientnet_lite0", "size": size,
                               "results": [_record(r) for r in results]}, indent=2) + "\n", args.json)
        print(f"wrote {args.json}")
    first = results[0]
    if first.test is not None:
        return first.test.map5
    if first.oof_map5 is None:
        raise SystemExit("error: neither folds.csv nor test/ with truth.csv: nothing to score")
    return first.oof_map5


def main() -> int:
    p = _cli.parser(__doc__)
    p.add_argument("--features", choices=("pixels", "lite0"), default="pixels",
                   help="raw grey pixels, or frozen ImageNet EfficientNet-Lite0 features; default: %(default)s")
    p.add_argument("--size", type=int, default=None,
                   help="thumbnail side (pixels: default 32) or branch input size (lite0: default 224)")
    p.add_argument("--crop", action="store_true", help="pixels: end with the crop's MAP@5 instead of the whole photo's")
    p.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS),
                   help="lite0: out-of-fold protocols, the first gives the test threshold; default: fold catalog")
    p.add_argument("--reuse", type=Path, default=None, metavar="DIR",
                   help="lite0: features cached by score_matrix.py for a frozen-branch run (work/features/<model>), "
                        "reused where a sample matches fresh frozen features")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="lite0: also write the results as JSON")
    args = p.parse_args()
    value = pixels(args) if args.features == "pixels" else lite0(args)
    print(f"MAP@5 {value:.4f}")
    return 0


if __name__ == "__main__":
    _cli.run(main)
