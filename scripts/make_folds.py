"""Split the catalog into folds for Siamese training (5th-place scheme) and write DATA_DIR/folds.csv.

Near-duplicate photos among the catalog photos are found first (DATA_DIR/duplicates.csv) and kept on the
same side of every fold. fold = the validation fold of a photo, -1 = training only, -2 = unused new_whale.
"""

from __future__ import annotations

import _cli
from data.catalog import NEW_WHALE, load_catalog
from data.folds import fold_summary, make_folds
from data.io import write_csv


def main() -> int:
    p = _cli.parser(__doc__)
    p.add_argument("--n-folds", type=int, default=4, help="number of folds (at least 2); default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="random seed of the split; default: %(default)s")
    p.add_argument("--no-duplicates", action="store_true",
                   help="skip the near-duplicate search (faster; copies may then straddle folds)")
    args = p.parse_args()
    if args.n_folds < 2:
        p.error("--n-folds must be at least 2")

    catalog = load_catalog(args.data_dir, need_test=False)
    train = catalog.train
    print(f"read {args.data_dir / 'train.csv'}: {len(train)} photos, {train['Id'].nunique()} Ids "
          f"({(train['Id'] == NEW_WHALE).sum()} {NEW_WHALE} photos)")

    groups = None
    pairs = None
    if not args.no_duplicates:
        from data.duplicates import duplicate_groups, find_duplicates  # decoding stack, only when needed

        paths = [catalog.train_path(name) for name in train["Image"]]
        pairs = find_duplicates(paths, names=train["Image"].tolist())
        groups = duplicate_groups(pairs)

    folds = make_folds(train, n_folds=args.n_folds, seed=args.seed, groups=groups)
    if pairs is not None:
        out = write_csv(pairs, args.data_dir / "duplicates.csv")
        print(f"wrote {out}: {len(pairs)} near-duplicate pairs in {len(set(groups.values()))} groups")
    out = write_csv(folds, args.data_dir / "folds.csv")
    print(f"wrote {out}")
    for row in fold_summary(folds).itertuples():
        print(f"fold {row.fold}: {row.train} training, {row.val} validation "
              f"({row.val_new_whale} {NEW_WHALE}, {row.new_whale_share:.1%})")
    print(f"training only: {(folds['fold'] == -1).sum()} photos; unused {NEW_WHALE}: {(folds['fold'] == -2).sum()}")
    return 0


if __name__ == "__main__":
    _cli.run(main)
