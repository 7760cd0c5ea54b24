"""Box every catalog and query photo with the trained fold detectors and write boxes.csv.

Each photo and its mirror go through the detectors of <work-dir>/bbox/fold<k>.pt (a photo that a fold
held out in training through that fold's model only); the boxes are un-mirrored and fused. Reads
train.csv, train/ and test/ (when present) of --data-dir; writes <data-dir>/boxes.csv (or --out:
Image,x0,y0,x1,y1 in original upright pixels), boxes_missing.csv beside it listing photos left without a
box (they are used whole), and a contact sheet boxes_sheet.png beside it (or --sheet). With true boxes
(--truth, default <data-dir>/truth_boxes.csv when present) it prints their mean IoU and draws them too.

Examples:
  python scripts/predict_bbox.py
  python scripts/predict_bbox.py --data-dir ../shared/data/humpback_flukes --out work/flukes/boxes.csv
  python scripts/predict_bbox.py --set predict.keep_score=0.4 --sheet work/sheet.png --sheet-count 60
"""

from __future__ import annotations

from pathlib import Path

import _cli
from bbox.metrics import mean_iou
from bbox.predict import load_fold_models, photos_to_box, predict_photos, routes_for, write_boxes
from bbox.sheet import contact_sheet, pick_for_sheet
from data.catalog import read_boxes
from data.device import pick_device
from data.settings import Bbox


def main() -> int:
    p = _cli.parser(__doc__, default_config="bbox/default.yaml")
    _cli.catalog_flags(p)
    p.add_argument("--only", choices=("all", "test", "unboxed"), default="all",
                   help="which photos: all, the query photos only, or the query photos and the catalog photos "
                        "that --boxes (or boxes.csv) has no box for, its boxes kept (default: %(default)s)")
    p.add_argument("--out", type=Path, help="boxes CSV to write (default: <data-dir>/boxes.csv)")
    p.add_argument(
        "--sheet", type=Path, help="contact sheet PNG (default: boxes_sheet.png beside the boxes CSV)"
    )
    p.add_argument(
        "--sheet-count", type=int, default=36, help="photos on the sheet; 0: no sheet; default: %(default)s"
    )
    p.add_argument(
        "--truth", type=Path, help="true boxes CSV (default: <data-dir>/truth_boxes.csv when present)"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the config's train.device)")
    args = p.parse_args()
    cfg = _cli.config_from(args, Bbox)
    catalog = _cli.load_catalog(args, need_test=False)
    names, paths, kept = photos_to_box(catalog, args.only)
    folds = load_fold_models(args.work_dir)
    device = pick_device(args.device or cfg["train"]["device"])
    data_cfg = folds.config["data"]
    routes = routes_for(names, folds.holdouts)
    held_out = sum(len(r) < len(folds.models) for r in routes)
    print(
        f"{len(names)} photos ({len(names) - len(catalog.test_images)} catalog, {len(catalog.test_images)} query; "
        + (f"{len(kept)} catalog boxes kept; " if kept else "") +
        f"{held_out} boxed out-of-fold), {len(folds.models)} fold detectors from "
        f"{folds.checkpoints[0].parent}; device {device}"
    )
    preds = predict_photos(
        folds.models,
        paths,
        routes=routes,
        cfg=cfg["predict"],
        max_side=int(data_cfg["load_side"]),
        max_megapixels=float(data_cfg["max_megapixels"]),
        device=device,
    )
    predictions = dict(zip(names, preds, strict=True))
    out, missing_csv = write_boxes({**kept, **predictions}, args.out or args.data_dir / "boxes.csv")
    missing = [n for n, pr in predictions.items() if pr.box is None]
    print(
        f"wrote {out}: {len(names) - len(missing)} boxes; {len(missing)} photos without a box"
        + (f" (listed in {missing_csv}, used whole)" if missing_csv else "")
    )
    truth_csv = args.truth or (args.data_dir / "truth_boxes.csv")
    truth = {}
    if args.truth or truth_csv.is_file():
        truth = {n: b for n, b in read_boxes(truth_csv).items() if n in predictions}
        if truth:
            boxed = {n: pr.box for n, pr in predictions.items() if pr.box is not None}
            print(f"mean IoU against {truth_csv}: {mean_iou(boxed, truth):.4f} ({len(truth)} photos)")
    if args.sheet_count > 0:
        shown = pick_for_sheet(names, args.sheet_count, missing)
        path_of = dict(zip(names, paths, strict=True))
        sheet = contact_sheet(
            {n: path_of[n] for n in shown},
            {n: predictions[n].box for n in shown},
            args.sheet or out.with_name(out.stem + "_sheet.png"),
            truth=truth,
            title=f"{args.data_dir.name}: {len(shown)} of {len(names)} photos",
        )
        print(f"wrote {sheet}")
    return 0


if __name__ == "__main__":
    _cli.run(main)
