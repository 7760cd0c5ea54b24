"""Train the fluke box detector over k folds and print its out-of-fold mean IoU.

Reads the training boxes (--boxes FILE, Image,x0,y0,x1,y1 in original upright pixels; default
<data-dir>/truth_boxes.csv, the synthetic catalog's true boxes) and the photos they name from
<data-dir>/train/ or test/. Writes <work-dir>/bbox/fold<k>.pt (one detector per fold), and
<work-dir>/bbox/oof_boxes.csv and metrics.csv (each fold's boxes of the photos it held out, and their IoU).

Examples:
  python scripts/train_bbox.py
  python scripts/train_bbox.py --data-dir data/humpback --boxes my_boxes.csv --config configs/bbox/gpu.yaml
  python scripts/train_bbox.py --resume                      # continue a killed run
  python scripts/train_bbox.py --set train.epochs=2 --set train.folds=3
"""

from __future__ import annotations

from pathlib import Path

import _cli
from bbox.data import resolve_paths
from bbox.predict import write_boxes
from bbox.train import fold_summary, train_folds
from data.catalog import read_boxes
from data.errors import InputError
from data.io import write_csv
from data.settings import Bbox


def main() -> int:
    p = _cli.parser(__doc__, default_config="bbox/default.yaml")
    p.add_argument("--boxes", type=Path, help="training boxes CSV (default: <data-dir>/truth_boxes.csv)")
    p.add_argument(
        "--resume", action="store_true", help="continue unfinished fold checkpoints, keep finished ones"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the config's train.device)")
    args = p.parse_args()
    cfg = _cli.config_from(args, Bbox)
    if args.device:
        cfg["train"]["device"] = args.device
    boxes_csv = args.boxes or args.data_dir / "truth_boxes.csv"
    if not boxes_csv.is_file():
        raise InputError(
            boxes_csv,
            "training boxes not found (the synthetic catalog has truth_boxes.csv; "
            "give your own Image,x0,y0,x1,y1 file with --boxes FILE)",
        )
    folders = [args.data_dir / "train", args.data_dir / "test"]
    boxes = read_boxes(boxes_csv, image_dir=folders)
    paths = dict(zip(boxes, resolve_paths(list(boxes), folders, boxes_csv), strict=True))
    t = cfg["train"]
    print(
        f"training boxes: {boxes_csv} ({len(boxes)} photos"
        + (f", using {t['max_images']}" if t["max_images"] and t["max_images"] < len(boxes) else "")
        + f"); {t['folds']} folds x {t['epochs']} epochs; "
        + f"{cfg['model']['arch']} on {cfg['model']['backbone']}"
    )
    reports = train_folds(boxes, paths, cfg, args.work_dir, resume=args.resume)
    out_dir = args.work_dir / "bbox"
    oof = {name: pred for r in reports for name, pred in r.predictions.items()}
    oof_csv, missing_csv = write_boxes(oof, out_dir / "oof_boxes.csv")
    summary = fold_summary(reports, boxes)
    write_csv(summary, out_dir / "metrics.csv")
    print(summary.to_string(index=False))
    print(
        f"wrote {', '.join(str(r.checkpoint) for r in reports)}, {oof_csv}, {out_dir / 'metrics.csv'}"
        + (f", {missing_csv}" if missing_csv else "")
    )
    print(f"out-of-fold mean IoU {summary['mean_iou'].iloc[-1]:.4f}")
    return 0


if __name__ == "__main__":
    _cli.run(main)
