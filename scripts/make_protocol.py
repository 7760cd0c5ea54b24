"""Make a held-out evaluation protocol from a labelled catalog alone (train.csv + train/ photos).

A seeded split writes a new data folder (--out) in the --data-dir layout:
  train.csv     the remaining catalog (new_whale photos of the source stay in it)
  train/        its photos (hard links where possible, symbolic links otherwise, copies as a last resort)
  test/         the query photos, renamed q_00000.jpg, ... in a seeded order (no Id in the name)
  truth.csv     Image,Id of the queries: new_whale for the individuals held out whole
  boxes.csv     the source's boxes (queries renamed), when the source has boxes.csv
  queries.csv   Image,Source: the source photo of each query;  protocol.json: settings and counts
A share of the individuals (--new-share) is held out whole: their photos become new_whale queries
(--max-new-photos caps how many per individual). Of every other individual with --min-photos photos or
more, --queries-per-individual photos become queries, so every individual keeps at least one photo.
The folder is written beside --out under a temporary name and renamed into place; the same seed gives
identical files.

Example:
  python scripts/make_protocol.py --data-dir ../shared/data/right_whale --out /tmp/protocol_rw --seed 0
  python scripts/make_folds.py --data-dir /tmp/protocol_rw        # then the pipeline on it, and
  python scripts/evaluate.py --submission work/submission.csv --truth /tmp/protocol_rw/truth.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _cli
from data.protocol import LINK_MODES, ProtocolConfig, write_protocol

DEFAULTS = ProtocolConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=_cli.DEFAULT_DATA_DIR,
                   help="source catalog folder with train.csv and train/ (boxes.csv used when present); "
                        "default: %(default)s")
    p.add_argument("--out", type=Path, required=True, help="the protocol folder to write (must not exist)")
    p.add_argument("--force", action="store_true", help="replace an existing protocol folder at --out")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the split; default: %(default)s")
    p.add_argument("--new-share", type=float, default=DEFAULTS.new_individual_share,
                   help="share of the individuals held out whole, their photos new_whale queries; "
                        "default: %(default)s")
    p.add_argument("--max-new-photos", type=int, default=DEFAULTS.max_new_photos,
                   help="at most this many query photos per held-out individual (0: all); default: %(default)s")
    p.add_argument("--queries-per-individual", type=int, default=DEFAULTS.queries_per_individual,
                   help="photos held out as queries of each remaining individual; default: %(default)s")
    p.add_argument("--min-photos", type=int, default=DEFAULTS.min_photos,
                   help="only individuals with at least this many photos give queries (must exceed "
                        "--queries-per-individual); default: %(default)s")
    p.add_argument("--link", choices=LINK_MODES, default="auto",
                   help="how photos are placed: auto tries hardlink, then symlink, then copy; default: %(default)s")
    return p


def main() -> int:
    args = build_parser().parse_args()
    cfg = ProtocolConfig(seed=args.seed, new_individual_share=args.new_share,
                         queries_per_individual=args.queries_per_individual, min_photos=args.min_photos,
                         max_new_photos=args.max_new_photos)
    try:
        cfg.check()
    except ValueError as err:
        raise _cli.InputError(None, f"bad settings: {err}") from None
    print(f"reading {args.data_dir}/train.csv; seed {cfg.seed}")
    summary = write_protocol(args.data_dir, args.out, cfg, link=args.link, force=args.force)
    for line in summary.lines():
        print(line)
    return 0


if __name__ == "__main__":
    _cli.run(main)
