"""A field season in batches, as a researcher runs it: identify a batch against the catalog, a person decides on
the review page, the decisions go into the catalog, the next batch is matched against the grown catalog.

The labelled catalog of --data-dir is split into an initial catalog and --batches batches (data/season.py); the
person is played from the truth with --error-rate wrong decisions. Per batch: MAP@5 against the catalog as it
then is, the time of identify.py, and what the decisions changed. The last batch is identified a second time
from scratch (an empty feature cache) against the same catalog, for the time the cache saves.

    .venv/bin/python bench/season.py --data-dir /tmp/demo_data --out /tmp/season --box-model /tmp/demo_work
    .venv/bin/python bench/season.py --data-dir ../shared/data/right_whale --out /tmp/rw_season \
        --set local.matcher=mnn
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.catalog import read_train_csv  # noqa: E402
from data.io import write_csv, write_text  # noqa: E402
from data.season import batch_truth, simulate_decisions, write_season  # noqa: E402


def run(script: str, *args: str) -> float:
    start = time.perf_counter()
    print(f"== python scripts/{script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], check=True)
    return time.perf_counter() - start


def map5_of(out: Path) -> float:
    return float(json.loads((out / "evaluation.json").read_text())["map5"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True, help="a labelled catalog (train.csv, train/)")
    p.add_argument("--out", type=Path, required=True, help="the season's folder (made anew)")
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--initial-share", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--error-rate", type=float, default=0.05, help="share of wrong decisions of the person")
    p.add_argument("--runs", type=Path, help="trained runs for identify.py (default: the untrained members)")
    p.add_argument("--box-model", type=Path, help="identify.py --box-model")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "identify.yaml")
    p.add_argument("--oof-queries", type=int, default=200)
    p.add_argument("--no-scratch", action="store_true", help="skip the from-scratch run of the last batch")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    paths = write_season(args.data_dir, args.out, args.batches, args.initial_share, args.seed)
    true_id = dict(pd.read_csv(paths["truth"], dtype=str, keep_default_na=False).values)
    catalog = paths["catalog"]
    common = ["--catalog", str(catalog), "--config", str(args.config), "--oof-queries", str(args.oof_queries)]
    common += [x for item in args.overrides for x in ("--set", item)]
    common += ["--runs", str(args.runs)] if args.runs else []
    common += ["--box-model", str(args.box_model)] if args.box_model else []
    rows = []
    for k in range(1, args.batches + 1):
        photos = paths[f"batch{k}"]
        out = args.out / "work" / f"batch{k}"
        train = read_train_csv(catalog / "train.csv")
        truth = batch_truth(train, true_id, sorted(p.name for p in photos.iterdir()))
        truth_csv = write_csv(truth, args.out / f"batch{k}_truth.csv")
        seconds = run("identify.py", *common, "--photos", str(photos), "--work-dir", str(args.out / "work"),
                      "--out", str(out), "--truth", str(truth_csv))
        row = {"batch": k, "photos": len(truth), "catalog": len(train), "new": int((truth["Id"] == "new_whale").sum()),
               "map5": map5_of(out), "seconds": round(seconds, 1)}
        if k == args.batches and not args.no_scratch:
            scratch = args.out / "scratch"
            row["scratch_seconds"] = round(run("identify.py", *common, "--photos", str(photos), "--work-dir",
                                               str(scratch), "--out", str(scratch / f"batch{k}"),
                                               "--truth", str(truth_csv)), 1)
            row["scratch_map5"] = map5_of(scratch / f"batch{k}")
        candidates = pd.read_csv(out / "candidates.csv", dtype={"Image": str, "Id": str}, keep_default_na=False)
        decisions = simulate_decisions(candidates, dict(truth.values), args.error_rate, seed=args.seed + k)
        decisions_csv = write_csv(decisions, out / "decisions.csv")
        right = truth.set_index("Image").loc[decisions["Image"], "Id"].to_numpy()
        made = decisions["Decision"].to_numpy()
        row["wrong_ids"] = int(sum(d not in (t, "none", "skip") for d, t in zip(made, right)))  # a wrong match
        row["missed"] = int(sum(d == "none" and t != "new_whale" for d, t in zip(made, right)))  # a known one split off
        apply = ["--catalog", str(catalog), "--photos", str(photos), "--decisions", str(decisions_csv)]
        if (out / "boxes.csv").is_file():
            apply += ["--boxes", str(out / "boxes.csv")]
        run("apply_decisions.py", *apply)
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    write_text(json.dumps(rows, indent=2) + "\n", args.out / "season.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
