"""Write a person's decisions on a batch of new photos (the review page's decisions.csv) into the catalog.

  python scripts/apply_decisions.py --catalog data/catalog --photos photos/2026-07 \
      --decisions ~/Downloads/decisions.csv [--boxes work/2026-07/boxes.csv] [--dry-run]

decisions.csv: Image,Decision. An Id of the catalog confirms the match (the photo joins train.csv with that Id and
is copied into train/); none or new_whale (none of the candidates) gives the photo a new Id, --id-prefix and a
counter that never collides with an existing Id (auto_0001, auto_0002 ...); skip, or no row, leaves it out.
--boxes (identify.py's boxes.csv of the batch) adds the boxes of the added photos to the catalog's boxes.csv;
folds.csv, when there is one, lists them as training-only (-1).

All or nothing: the whole file is checked first (a photo not in --photos, a photo decided twice, an unknown Id,
a photo already in the catalog: one line naming the file and the problem, the catalog unchanged); the old CSVs go
to <catalog>/backups/<date-time>/ before anything is written. --dry-run prints what would change and writes
nothing.
"""

from __future__ import annotations

from pathlib import Path

import _cli
from data.decisions import DEFAULT_PREFIX, apply_plan, plan_decisions


def main() -> int:
    p = _cli.Parser(description=__doc__)
    p.add_argument("--catalog", type=Path, required=True, help="catalog folder: train.csv, train/")
    p.add_argument("--photos", type=Path, required=True, help="the batch's folder of new photos")
    p.add_argument("--decisions", type=Path, required=True, help="decisions.csv (Image,Decision)")
    p.add_argument("--boxes", type=Path, help="boxes CSV of the batch (identify.py's <out>/boxes.csv)")
    p.add_argument("--id-prefix", default=DEFAULT_PREFIX, help="prefix of new Ids (default: %(default)s)")
    p.add_argument("--mode", choices=("copy", "hardlink", "symlink", "auto"), default="copy",
                   help="how a photo goes into train/ (default: %(default)s; auto: hardlink, else copy)")
    p.add_argument("--dry-run", action="store_true", help="print what would change; write nothing")
    args = p.parse_args()
    plan = plan_decisions(args.catalog, args.decisions, args.photos, boxes_csv=args.boxes, prefix=args.id_prefix)
    print("\n".join(plan.lines()))
    if args.dry_run:
        print("dry run: nothing written")
        return 0
    backup = apply_plan(plan, mode=args.mode)
    print(f"wrote {args.catalog / 'train.csv'} ({len(plan.added)} photos added); old files in {backup}")
    return 0


if __name__ == "__main__":
    _cli.run(main)
