"""Train one model (Siamese, or the ArcFace embedding family with model.family: arcface) on one fold through
every resolution stage of its schedule.

Reads train.csv, folds.csv (scripts/make_folds.py) and boxes.csv when present from --data-dir; writes
<work-dir>/runs/<model>/fold<k>/<size>px/{last,best}.pt and metrics.csv, and config.yaml of the run. A branch
that never trains (every block freeze_branch) shares its test-time-crop features with the other folds, runs and
score_matrix.py under <work-dir>/features/trunk/.

Examples:
  python scripts/train_fold.py 0
  python scripts/train_fold.py 1 --config configs/siamese/densenet121.yaml --data-dir data/humpback
  python scripts/train_fold.py 0 --config configs/arcface/densenet121.yaml
  python scripts/train_fold.py 0 --resume                     # continue a killed run
  python scripts/train_fold.py 0 --set train.seed=3 --set model.pretrained=false
  torchrun --standalone --nproc_per_node 4 scripts/train_fold.py 0 --config configs/siamese/kernel.yaml
"""

from __future__ import annotations

import os
import time

import torch
import yaml

import _cli
from data.catalog import load_catalog, read_folds
from data.device import pick_device
from data.distributed import from_env, local_device
from data.errors import InputError
from data.folds import fold_split
from data.io import write_text
from siamese.families import family_of
from siamese.trainer import build_fold_data
from siamese.trunk_cache import TRUNK_DIR


def main() -> int:
    p = _cli.parser(__doc__, default_config="siamese/demo.yaml")
    p.add_argument("fold", type=int, help="the validation fold to train for (0-based)")
    p.add_argument("--resume", action="store_true", help="continue from the newest last.pt of this run")
    p.add_argument("--weights", help="local branch weights file (safetensors or a torch state dict)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the config's train.device)")
    args = p.parse_args()
    cfg = _cli.config_from(args)
    if args.weights:
        cfg["model"]["weights"] = args.weights
    if args.device:
        cfg["train"]["device"] = args.device

    catalog = load_catalog(args.data_dir, need_test=False)
    folds_path = args.data_dir / "folds.csv"
    if not folds_path.is_file():
        raise InputError(folds_path, "not found; run scripts/make_folds.py first")
    train_df, val_df = fold_split(read_folds(folds_path, catalog.train), args.fold, include_singletons=True)
    data = build_fold_data(catalog, train_df, val_df)
    family = family_of(cfg)

    run_dir = args.work_dir / "runs" / cfg["model"]["name"] / f"fold{args.fold}"
    device = pick_device(cfg["train"]["device"])
    shards = from_env(device)  # under torchrun: one process per GPU (or CPU share), DistributedDataParallel
    device = local_device(device)
    if not shards.main:
        os.environ["TQDM_DISABLE"] = "1"  # one set of progress bars, from rank 0
    say = print if shards.main else (lambda *a, **k: None)
    torch.manual_seed(cfg["train"]["seed"])  # the same initial weights on every rank and run
    say(f"fold {args.fold}: {len(data.train_paths)} catalog images ({len(data.mining_index)} give pairs), "
        f"{len(data.val_paths)} validation images; device {device}"
        f"{f' x {shards.world} processes' if shards.world > 1 else ''}; writing {run_dir}")
    trainer = family.trainer(cfg, data, run_dir, device, shards=shards, source=folds_path,
                             trunk_dir=args.work_dir / "features" / TRUNK_DIR)
    if shards.main:
        write_text(yaml.safe_dump(cfg, sort_keys=False), run_dir / "config.yaml")
    start = time.perf_counter()
    metrics = trainer.fit(resume=args.resume)
    val = metrics.dropna(subset=["val_map5"])
    say(f"done in {time.perf_counter() - start:.0f} s; validation MAP@5 per block:")
    for _, row in val.iterrows():
        say(f"  {int(row['size'])}px block {int(row['block'])}: {row['val_map5']:.4f}")
    return 0


if __name__ == "__main__":
    _cli.run(main)
