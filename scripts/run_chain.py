"""Run the whole chain of one config on one catalog, as a user would, and summarise it.

Steps, each the project's own script in a subprocess: make_folds.py (--n-folds from the config's
``n_folds``), train_fold.py --resume for every fold of the config's ``folds:`` list, score_matrix.py,
final_ensemble.py, evaluate.py (when --data-dir has truth.csv) and baseline.py --features lite0 (the frozen
ImageNet EfficientNet-Lite0 cosine baseline at the last stage's size, reusing the features score_matrix.py
cached when the branch never trained). A step whose outputs exist is reused (--force redoes them).
Ends with the time of each step, the out-of-fold MAP@5 of each fold and of the blend, the test metrics and
the baseline; the last line is ``MAP@5 <value>`` (test when truth.csv exists, else out-of-fold). The ensemble's
results come from <work-dir>/ensemble/summary.json (written by final_ensemble.py), not its printed output.

Examples:
  python scripts/make_protocol.py --data-dir ../shared/data/right_whale --out /tmp/rw --seed 0 --max-new-photos 2
  python scripts/run_chain.py --config configs/siamese/real_cpu.yaml --data-dir /tmp/rw --work-dir /tmp/rw_work
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import _cli
from data.catalog import read_train_csv
from matching.chain import (
    build_steps,
    chain_folds,
    ensemble_lines,
    ensemble_oof_map5,
    fold_validation,
    oof_by_fold,
    read_ensemble_summary,
    run_steps,
)

SCRIPTS = Path(__file__).resolve().parent


def main() -> int:
    p = _cli.parser(__doc__, default_config="siamese/real_cpu.yaml")
    p.add_argument("--force", action="store_true", help="redo every step (removes --work-dir and folds.csv first)")
    args = p.parse_args()
    if args.overrides:
        p.error("--set is not passed on to the steps: put changes in the config file")
    cfg = _cli.config_from(args)
    data, work = args.data_dir, args.work_dir
    steps = build_steps(args.config, cfg, data, work)
    folds, _ = chain_folds(cfg, args.config)
    model = cfg["model"]["name"]
    if args.force:
        shutil.rmtree(work, ignore_errors=True)
        (data / "folds.csv").unlink(missing_ok=True)
    load_start = os.getloadavg()
    start = time.perf_counter()
    code, timings = run_steps(steps, SCRIPTS)
    if code != 0:
        return code
    total = time.perf_counter() - start

    labels = dict(read_train_csv(data / "train.csv")[["Image", "Id"]].itertuples(index=False))
    print("\n== summary")
    print(f"  load average (1, 5, 15 min) at start {', '.join(f'{x:.2f}' for x in load_start)}, "
          f"at end {', '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
    for name, seconds in timings:
        print(f"  {name:<24} {'reused' if seconds is None else f'{seconds:7.1f} s'}")
    print(f"  {'total':<24} {total:7.1f} s")
    val = fold_validation(work, model, folds)
    oof = oof_by_fold(work, model, folds, labels)
    for k in folds:
        print(f"  fold {k}: training-time validation MAP@5 {val.get(k, float('nan')):.4f} (fold protocol); "
              f"out-of-fold matrix MAP@5 {oof.get(k, float('nan')):.4f} (catalog protocol)")
    ensemble = read_ensemble_summary(work)  # final_ensemble.py's results (<work-dir>/ensemble/summary.json)
    for line in ensemble_lines(ensemble, model):
        print(f"  final_ensemble: {line}")
    result = None
    evaluation = work / "evaluation.json"
    if (data / "truth.csv").is_file() and evaluation.is_file():
        e = json.loads(evaluation.read_text())
        result = e["map5"]
        print(f"  test: MAP@5 {e['map5']:.4f}, top-1 {e['top1']:.4f}, new_whale precision "
              f"{_fmt(e['new_whale_precision'])} recall {_fmt(e['new_whale_recall'])} ({e['queries']} queries)")
    baseline = work / "baseline_lite0.json"
    if baseline.is_file():
        b = json.loads(baseline.read_text())
        for r in b["results"]:
            per_fold = ", ".join(f"{k} {v:.4f}" for k, v in r["fold_map5"].items())
            test = "" if r["test"] is None else f"; test MAP@5 {r['test']['map5']:.4f} top-1 {r['test']['top1']:.4f}"
            print(f"  frozen-Lite0 cosine baseline {b['size']} px ({r['protocol']} protocol): OOF MAP@5 "
                  f"{_fmt(r['oof_map5'])} (per fold: {per_fold}){test}")
    if result is None:
        result = ensemble_oof_map5(ensemble)
    print(f"MAP@5 {result:.4f}")
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    _cli.run(main)
