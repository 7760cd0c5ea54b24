"""Score matrices of every trained model and fold: test x catalog and out-of-fold validation x catalog.

For each <runs>/<model>/fold<k> (trained by scripts/train_fold.py) writes
<work-dir>/scores/<model>/fold<k>_test.npz and fold<k>_oof.npz (when --data-dir has folds.csv), then the
fold means <work-dir>/scores/<model>/{test,oof}.npz. Catalog = every non-new_whale image of train.csv.

Trained models apply to another catalog without retraining:
  python scripts/score_matrix.py --data-dir data/season2025 --runs work/runs --work-dir work/season2025
and to a folder of new photos against the catalog (--test-dir; scripts/identify.py runs this):
  python scripts/score_matrix.py --test-dir photos/batch3 --boxes work/batch3/boxes.csv --work-dir work/batch3

Several processes (GPUs or machines) through torchrun: query rows are split over the ranks, each scores
its rows, and rank 0 assembles the same files a single process writes:
  torchrun --nproc_per_node 2 scripts/score_matrix.py

Embedding runs (model.family: arcface) give cosine matrices mapped to probabilities by a logistic fitted on
each fold's out-of-fold matrix (fold<k>_calibration.csv). --meta NAME also scores the concatenated
embeddings of every embedding model of each fold as one more model, scores/NAME:
  python scripts/score_matrix.py --meta arcface_meta

Keypoint matching (SIFT + homography inliers, no training) adds the model scores/keypoints/{test,oof}.npz when
a run's config enables it (keypoints.enabled, as configs/siamese/demo.yaml does) or with --keypoints on; its settings
come from that config's keypoints section. --keypoints on with no trained runs scores with keypoints alone.

Learned local matching (ALIKED or DISK features, mutual nearest neighbours, LightGlue on each query's shortlist;
no training) adds scores/<local.name>/{test,oof}.npz the same way: local.enabled in a run's config, or --local on.
More local members (more_local: [...], each a local: section; DISK + LightGlue on the shortlist of ALIKED's
mutual-NN count is configs/arcface/real_cpu_disk.yaml) are scored after it, in order.
"""

from __future__ import annotations

import time
from pathlib import Path

import _cli
from data.catalog import read_folds
from data.device import pick_device
from data.distributed import from_env, local_device
from data.errors import InputError
from data.folds import leave_one_out_queries
from matching.runs.embedding import score_meta_embeddings
from matching.runs.keypoint_scores import keypoint_settings, score_keypoints, validation_images
from matching.runs.local_scores import local_members, score_local
from matching.runs.pipeline import combine_folds, score_run
from matching.runs.run import discover_runs


def main() -> int:
    p = _cli.parser(__doc__)
    _cli.catalog_flags(p)
    p.add_argument("--runs", type=Path, help="folder of trained runs (default: <work-dir>/runs)")
    p.add_argument("--cache-dir", type=Path,
                   help="the per-photo feature cache, shared by every catalog and batch scored with it "
                        "(default: <work-dir>/features)")
    p.add_argument("--oof-queries", type=int, default=0, metavar="N",
                   help="where --data-dir has no folds.csv: N catalog photos (of individuals with 2 or more) are "
                        "the out-of-fold queries of the untrained members (keypoints, local matching), each against "
                        "the catalog without itself, for their calibration and the new_whale threshold "
                        "(default: %(default)s, none)")
    p.add_argument("--models", nargs="+", help="only these model names (default: every model under --runs)")
    p.add_argument("--budget-mb", type=float, default=512,
                   help="memory for one block of pairs, beside the output matrix (default: %(default)s)")
    p.add_argument("--batch", type=int, default=64, help="images per feature batch (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: %(default)s)")
    p.add_argument("--meta", metavar="NAME", help="also score the meta-embedding of the embedding models as NAME")
    p.add_argument("--keypoints", choices=("auto", "on", "off"), default="auto",
                   help="keypoint matching (scores/keypoints): auto = when a run's config enables it "
                        "(default: %(default)s)")
    p.add_argument("--local", "--local-matching", dest="local", choices=("auto", "on", "off"), default="auto",
                   help="learned local matching (scores/<local.name>): auto = when a run's config enables it "
                        "(default: %(default)s); under torchrun write --local-matching (torchrun reads --local as "
                        "its own --local-addr)")
    args = p.parse_args()
    runs_dir = args.runs or args.work_dir / "runs"
    runs = discover_runs(runs_dir, args.models)
    if not runs and "on" not in (args.keypoints, args.local):
        raise InputError(runs_dir, "no trained runs (runs/<model>/fold<k>/config.yaml with the last stage's best.pt)")
    keypoints = keypoint_settings(runs, args.keypoints)
    given = _cli.config_from(args)  # --set local.* / more_local=[...] with --local on
    local = local_members(runs, args.local, given.get("local"), given.get("more_local"))
    catalog = _cli.load_catalog(args, need_test=True)
    folds_path = args.data_dir / "folds.csv"
    folds = read_folds(folds_path, catalog.train) if folds_path.is_file() else None
    cache_dir = args.cache_dir or args.work_dir / "features"
    untrained_val = validation_images(folds, runs)
    if untrained_val is None and args.oof_queries > 0:
        untrained_val = leave_one_out_queries(catalog.train, args.oof_queries)
    device = pick_device(args.device)
    shards = from_env(device)  # torchrun: query rows split over the processes, rank 0 writes the files
    device = local_device(device)
    say = print if shards.main else (lambda *a, **k: None)
    say(f"{len(runs)} run(s) under {runs_dir}; {len(catalog.test_images)} test images, "
          f"{(catalog.train['Id'] != 'new_whale').sum()} catalog images; device {device}")
    start = time.perf_counter()
    models = []
    for run in runs:
        val = None if folds is None else folds.loc[folds["fold"] == run.fold, "Image"].tolist()
        out_dir = args.work_dir / "scores" / run.model
        feat_dir = cache_dir / run.model / f"fold{run.fold}"
        for path in score_run(run, catalog, val, out_dir, feat_dir, device=device, budget_mb=args.budget_mb,
                              batch=args.batch, shards=shards):
            say(f"  wrote {path}")
        if run.model not in models:
            models.append(run.model)
    if args.meta and shards.main:
        models += score_meta_embeddings(args.meta, runs, catalog, folds, args.work_dir)
    if shards.main:
        for model in models:
            for path in combine_folds(args.work_dir / "scores" / model):
                print(f"  wrote {path}")
    if keypoints is not None:
        kp_start = time.perf_counter()
        val = untrained_val
        say(f"keypoint matching: {len(val or [])} out-of-fold queries, {len(catalog.test_images)} test queries")
        for path in score_keypoints(catalog, val, args.work_dir, keypoints, shards=shards, log=say,
                                    features_dir=cache_dir):
            say(f"  wrote {path}")
        say(f"  keypoint matching took {time.perf_counter() - kp_start:.0f} s")
    for member in local:  # under torchrun the processes share the photos, mutual-NN rows and LightGlue pairs
        local_start = time.perf_counter()
        val = untrained_val
        say(f"local matching {member['name']} ({member['extractor']}, {member['matcher']}): {len(val or [])} "
            f"out-of-fold queries, {len(catalog.test_images)} test queries")
        for path in score_local(catalog, val, args.work_dir, member, device=device, log=say, features_dir=cache_dir,
                                shards=shards):
            say(f"  wrote {path}")
        say(f"  local matching took {time.perf_counter() - local_start:.0f} s")
    shards.barrier()
    say(f"done in {time.perf_counter() - start:.0f} s" + (f" on {shards.world} processes" if shards.world > 1 else ""))
    return 0


if __name__ == "__main__":
    _cli.run(main)
