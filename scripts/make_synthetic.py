"""Generate the synthetic humpback-fluke catalog (the default data set): photos, train.csv, truth files.

Example: python scripts/make_synthetic.py --out data/synthetic --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _cli
from data.synthetic import SynthConfig, write_catalog

DEFAULTS = SynthConfig()


def build_parser() -> argparse.ArgumentParser:
    p = _cli.Parser(description=__doc__)
    p.add_argument("--out", type=Path, default=_cli.DEFAULT_DATA_DIR, help="catalog folder; default: %(default)s")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="master seed; default: %(default)s")
    p.add_argument("--force", action="store_true", help="replace an existing catalog folder")
    p.add_argument("--individuals", type=int, default=DEFAULTS.individuals,
                   help="known individuals (with an Id in train.csv); default: %(default)s")
    p.add_argument("--mean-photos", type=float, default=DEFAULTS.mean_photos,
                   help="mean train photos per known individual, long-tailed; default: %(default)s")
    p.add_argument("--max-photos", type=int, default=DEFAULTS.max_photos,
                   help="most train photos of one individual; default: %(default)s")
    p.add_argument("--train-new-share", type=float, default=DEFAULTS.train_new_share,
                   help="share of train.csv rows that are new_whale; default: %(default)s")
    p.add_argument("--test-photos", type=int, default=DEFAULTS.test_photos, help="default: %(default)s")
    p.add_argument("--test-new-share", type=float, default=DEFAULTS.test_new_share,
                   help="share of test photos of individuals absent from train; default: %(default)s")
    p.add_argument("--width", type=int, default=DEFAULTS.width, help="photo width in pixels; default: %(default)s")
    p.add_argument("--height", type=int, default=DEFAULTS.height, help="photo height; default: %(default)s")
    p.add_argument("--difficulty", type=float, default=DEFAULTS.difficulty,
                   help="scale of pose, lighting, occlusion, blur, noise and JPEG loss (0 = clean); "
                        "default: %(default)s")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main() -> int:
    args = build_parser().parse_args()
    cfg = SynthConfig(seed=args.seed, individuals=args.individuals, mean_photos=args.mean_photos,
                      max_photos=args.max_photos, train_new_share=args.train_new_share,
                      test_photos=args.test_photos, test_new_share=args.test_new_share,
                      width=args.width, height=args.height, difficulty=args.difficulty)
    try:
        cfg.check()
    except ValueError as err:
        raise _cli.InputError(None, f"bad settings: {err}") from None
    s = write_catalog(args.out, cfg, force=args.force, progress=not args.quiet)
    print(f"wrote {s.out}/ in {s.seconds:.1f} s (seed {cfg.seed}, {cfg.width}x{cfg.height} px, "
          f"difficulty {cfg.difficulty})")
    print(f"  train.csv: {s.train_photos} photos of {s.known_individuals} known individuals "
          f"+ {s.train_new_whale} new_whale ({s.train_new_whale / max(s.train_photos, 1):.0%})")
    print(f"  test/: {s.test_photos} photos; truth.csv: {s.test_new_whale} new_whale "
          f"({s.test_new_whale / s.test_photos:.0%})")
    tail = ", ".join(f"{k}:{v}" for k, v in s.photos_per_whale.items())
    print(f"  individuals by train photo count: {tail}")
    print("  truth_boxes.csv (every photo), synthetic.json, contact_sheet.png")
    return 0


if __name__ == "__main__":
    _cli.run(main)
