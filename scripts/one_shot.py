"""N-way one-shot accuracy of trained runs on a one-shot protocol (make_protocol.py --one-shot N).

For every task folder of --protocol (task_000/, ...: one photo per class in train/, one query per class in
test/) the query x catalog score matrix is computed with the trained runs under --runs
(<model>/fold<k>/config.yaml, as train_fold.py writes them), by the same scoring as score_matrix.py: folds
averaged per model, then models averaged. The answer to a query is the best-scoring catalog class (new_whale
is never an answer in a one-shot task). Writes, under --work-dir:
  <task>/features/, <task>/scores/   the feature caches and score matrices of each task, kept apart
  <task>/submission.csv              five labels per query (Kaggle format; evaluate.py gives the same top-1)
  one_shot.csv                       task, groups, queries, correct, accuracy, 95% Wilson interval; row "all"
The last line printed is "one-shot accuracy <value>" (all queries of all tasks pooled).

Example:
  python scripts/make_protocol.py --data-dir ../shared/data/omniglot --out /tmp/omni_proto \\
      --one-shot 20 --tasks 20 --held-out-groups 2 --seed 0
  python scripts/make_folds.py --data-dir /tmp/omni_proto/catalog
  python scripts/train_fold.py 0 --config configs/siamese/omniglot.yaml --data-dir /tmp/omni_proto/catalog \
      --work-dir work/omni
  python scripts/one_shot.py --protocol /tmp/omni_proto --runs work/omni/runs --work-dir work/omni/one_shot
  python scripts/evaluate.py --submission work/omni/one_shot/task_000/submission.csv \\
      --truth /tmp/omni_proto/task_000/truth.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import _cli
from data.device import pick_device
from data.errors import InputError
from matching.evaluation.one_shot import run_one_shot
from matching.runs.run import discover_runs


def build_parser() -> argparse.ArgumentParser:
    p = _cli.Parser(description=__doc__)
    p.add_argument("--protocol", type=Path, required=True,
                   help="the one-shot protocol folder (protocol.json, task_000/, ...)")
    p.add_argument("--runs", type=Path, required=True,
                   help="folder of trained runs: <model>/fold<k>/config.yaml with the last stage's best.pt")
    p.add_argument("--work-dir", type=Path, default=_cli.DEFAULT_WORK_DIR / "one_shot",
                   help="where the per-task caches, submissions and one_shot.csv go; default: %(default)s")
    p.add_argument("--models", nargs="+", help="only these model names (default: every model under --runs)")
    p.add_argument("--budget-mb", type=float, default=512,
                   help="memory for one block of pairs, beside the output matrix (default: %(default)s)")
    p.add_argument("--batch", type=int, default=64, help="images per feature batch (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: %(default)s)")
    return p


def main() -> int:
    args = build_parser().parse_args()
    runs = discover_runs(args.runs, args.models)
    if not runs:
        raise InputError(args.runs, "no trained runs (<model>/fold<k>/config.yaml with the last stage's best.pt)")
    device = pick_device(args.device)
    print(f"{len(runs)} run(s) under {args.runs}: " + ", ".join(f"{r.model} fold{r.fold}" for r in runs)
          + f"; protocol {args.protocol}; device {device}")
    report = run_one_shot(args.protocol, runs, args.work_dir, device=device, budget_mb=args.budget_mb,
                          batch=args.batch)
    for line in report.lines():
        print(line)
    return 0


if __name__ == "__main__":
    _cli.run(main)
