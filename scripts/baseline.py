"""Raw-pixel cosine nearest-neighbour MAP@5 of a catalog's test photos (whole photo and true fluke crop).

Needs ``truth.csv`` (and ``truth_boxes.csv`` for the crop), as written by make_synthetic.py. The last
line is ``MAP@5 <value>`` of the whole-photo version (of the crop with ``--crop``).
"""

from __future__ import annotations

import _cli
from matching.baseline import raw_pixel_baseline


def main() -> int:
    p = _cli.parser(__doc__)
    p.add_argument("--size", type=int, default=32, help="thumbnail side in pixels; default: %(default)s")
    p.add_argument("--crop", action="store_true", help="end with the crop's MAP@5 instead of the whole photo's")
    args = p.parse_args()
    print(f"reading {args.data_dir}/: train.csv, truth.csv, truth_boxes.csv, train/, test/")
    results = {}
    for name, crop in (("whole photo", False), ("fluke crop", True)):
        r = raw_pixel_baseline(args.data_dir, crop=crop, size=args.size, progress=True)
        results[crop] = r
        print(f"{name}: MAP@5 {r.map5:.4f} ({r.queries} queries x {r.gallery} gallery photos, "
              f"{args.size}x{args.size} grey, new_whale below cosine {r.threshold:.3f})")
    print(f"MAP@5 {results[args.crop].map5:.4f}")
    return 0


if __name__ == "__main__":
    _cli.run(main)
