"""Make a held-out evaluation protocol from a labelled catalog alone (train.csv + train/ photos).

Two modes, both seeded (the same source and settings give identical files), both written beside --out
under a temporary name and renamed into place. Photos are hard links where possible, symbolic links
otherwise, copies as a last resort (--link).

Open-set identification (the default mode): a new data folder (--out) in the --data-dir layout:
  train.csv     the remaining catalog (new_whale photos of the source stay in it)
  train/        its photos
  test/         the query photos, renamed q_00000.jpg, ... in a seeded order (no Id in the name)
  truth.csv     Image,Id of the queries: new_whale for the individuals held out whole
  boxes.csv     the source's boxes (queries renamed), when the source has boxes.csv
  queries.csv   Image,Source: the source photo of each query;  protocol.json: settings and counts
A share of the individuals (--new-share) is held out whole: their photos become new_whale queries
(--max-new-photos caps how many per individual). Of every other individual with --min-photos photos or
more, --queries-per-individual photos become queries, so every individual keeps at least one photo.

N-way one-shot tasks (--one-shot N; the Omniglot benchmark of Lake et al. and Koch et al. 2015):
whole groups of classes are held out, a class's group being its Id before the first '/' (the alphabet of
Omniglot's "Balinese/character01"), or the Id itself. --held-out-groups K draws K groups by the seed;
--groups A B ... names them instead. --out then holds
  catalog/      train.csv + train/ of the other groups: the training catalog (make_folds.py, train_fold.py)
  task_000/ ... --tasks data folders, each N held-out classes with one photo (the shot) in train.csv +
                train/, one other photo of each (the query) in test/, truth.csv and queries.csv as above
  protocol.json settings, held-out groups, counts and the group(s) of every task
The N classes of a task come from one held-out group (taken in turn) when a group has N or more classes,
else from all held-out groups together. --class-rotations 4 adds every catalog class turned by 90, 180 and 270
degrees as three classes of their own (Omniglot's 178 training characters become 712; tasks are never turned).
scripts/one_shot.py scores the tasks with trained runs.

Examples:
  python scripts/make_protocol.py --data-dir ../shared/data/right_whale --out /tmp/protocol_rw --seed 0
  python scripts/make_folds.py --data-dir /tmp/protocol_rw        # then the pipeline on it, and
  python scripts/evaluate.py --submission work/submission.csv --truth /tmp/protocol_rw/truth.csv

  python scripts/make_protocol.py --data-dir ../shared/data/omniglot --out /tmp/omni_proto \\
      --one-shot 20 --tasks 20 --held-out-groups 2 --seed 0 --class-rotations 4
  python scripts/make_folds.py --data-dir /tmp/omni_proto/catalog  # train on catalog/, then
  python scripts/one_shot.py --protocol /tmp/omni_proto --runs work/runs
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _cli
from data.protocol import LINK_MODES, ROTATIONS, OneShotConfig, ProtocolConfig, write_one_shot, write_protocol

DEFAULTS = ProtocolConfig()
ONE_SHOT = OneShotConfig()
OPEN_SET_FLAGS = ("new_share", "max_new_photos", "queries_per_individual", "min_photos")
ONE_SHOT_FLAGS = ("tasks", "held_out_groups", "groups", "class_rotations")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    p = _cli.Parser(description=__doc__)
    p.add_argument("--data-dir", type=Path, default=_cli.DEFAULT_DATA_DIR,
                   help="source catalog folder with train.csv and train/ (boxes.csv used when present); "
                        "default: %(default)s")
    p.add_argument("--out", type=Path, required=True, help="the protocol folder to write (must not exist)")
    p.add_argument("--force", action="store_true", help="replace an existing protocol folder at --out")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the split; default: %(default)s")
    p.add_argument("--link", choices=LINK_MODES, default="auto",
                   help="how photos are placed: auto tries hardlink, then symlink, then copy; default: %(default)s")
    open_set = p.add_argument_group("open-set mode (the default)")
    open_set.add_argument("--new-share", type=float,
                          help="share of the individuals held out whole, their photos new_whale queries; "
                               f"default: {DEFAULTS.new_individual_share}")
    open_set.add_argument("--max-new-photos", type=int,
                          help="at most this many query photos per held-out individual (0: all); "
                               f"default: {DEFAULTS.max_new_photos}")
    open_set.add_argument("--queries-per-individual", type=int,
                          help="photos held out as queries of each remaining individual; "
                               f"default: {DEFAULTS.queries_per_individual}")
    open_set.add_argument("--min-photos", type=int,
                          help="only individuals with at least this many photos give queries (must exceed "
                               f"--queries-per-individual); default: {DEFAULTS.min_photos}")
    one_shot = p.add_argument_group("one-shot mode (--one-shot N)")
    one_shot.add_argument("--one-shot", type=int, metavar="N",
                          help="write N-way one-shot tasks instead of the open-set split")
    one_shot.add_argument("--tasks", type=int, metavar="T", help=f"number of tasks; default: {ONE_SHOT.tasks}")
    one_shot.add_argument("--held-out-groups", type=int, metavar="K",
                          help=f"groups held out, drawn by the seed; default: {ONE_SHOT.held_out_groups}, "
                               "or the number of --groups")
    one_shot.add_argument("--groups", nargs="+", metavar="GROUP", help="hold out exactly these groups")
    one_shot.add_argument("--class-rotations", type=int, metavar="R", choices=ROTATIONS,
                          help="also train on every catalog class turned by 180 degrees (2) or by 90, 180 and 270 "
                               "(4), each a class of its own (Omniglot: BENCHMARKS.md); tasks are never turned; "
                               "default: 1 (none)")
    return p


def _given(args: argparse.Namespace, dests: tuple[str, ...]) -> list[str]:
    return [_flag(d) for d in dests if getattr(args, d) is not None]


def _open_set_config(args: argparse.Namespace) -> ProtocolConfig:
    def pick(value, default):
        return default if value is None else value

    return ProtocolConfig(seed=args.seed, new_individual_share=pick(args.new_share, DEFAULTS.new_individual_share),
                          queries_per_individual=pick(args.queries_per_individual, DEFAULTS.queries_per_individual),
                          min_photos=pick(args.min_photos, DEFAULTS.min_photos),
                          max_new_photos=pick(args.max_new_photos, DEFAULTS.max_new_photos))


def _one_shot_config(args: argparse.Namespace) -> OneShotConfig:
    groups = tuple(args.groups or ())
    held = args.held_out_groups if args.held_out_groups is not None else (len(groups) or ONE_SHOT.held_out_groups)
    tasks = ONE_SHOT.tasks if args.tasks is None else args.tasks
    return OneShotConfig(ways=args.one_shot, tasks=tasks, held_out_groups=held, groups=groups, seed=args.seed,
                         class_rotations=args.class_rotations or 1)


def _settings(args: argparse.Namespace) -> ProtocolConfig | OneShotConfig:
    """The settings of the chosen mode; a flag of the other mode is an error."""
    one_shot = args.one_shot is not None
    stray = _given(args, OPEN_SET_FLAGS if one_shot else ONE_SHOT_FLAGS)
    if stray:
        rule = "apply only without --one-shot" if one_shot else "need --one-shot N"
        raise _cli.InputError(None, f"bad settings: {' '.join(stray)} {rule}")
    cfg = _open_set_config(args) if args.one_shot is None else _one_shot_config(args)
    try:
        cfg.check()
    except ValueError as err:
        raise _cli.InputError(None, f"bad settings: {err}") from None
    return cfg


def main() -> int:
    args = build_parser().parse_args()
    cfg = _settings(args)
    print(f"reading {args.data_dir}/train.csv; seed {cfg.seed}")
    write = write_one_shot if isinstance(cfg, OneShotConfig) else write_protocol
    summary = write(args.data_dir, args.out, cfg, link=args.link, force=args.force)
    for line in summary.lines():
        print(line)
    return 0


if __name__ == "__main__":
    _cli.run(main)
