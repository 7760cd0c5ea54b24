"""Blend the score matrices of the trained models, rank with new_whale, post-process, write submission.csv.

Reads <work-dir>/scores/<model>/{test,oof}.npz (scripts/score_matrix.py) and train.csv of --data-dir (the
truth of the out-of-fold rows); prints the out-of-fold MAP@5 of each model and of the blend with and without
the column-wise pass; writes <work-dir>/submission.csv and the blended matrices <work-dir>/ensemble/{test,oof}.npz
(read by scripts/report.py). When --data-dir has truth.csv (the synthetic
catalog), prints the test MAP@5 too.

Writes what it prints to <work-dir>/ensemble/summary.json as well (read by scripts/run_chain.py): ``models``
(each ``name``, ``weight``, ``oof_map5`` and ``threshold``, null without out-of-fold matrices), the blend's
``oof_map5`` and ``oof_map5_post`` (with the column-wise pass; both null without out-of-fold matrices),
``post_applied``, ``threshold``, ``swapped`` (test queries the column pass changed), ``queries``,
``test_map5`` and ``truth`` (null without truth.csv) and ``notes``.
"""

from __future__ import annotations

import json
from pathlib import Path

import _cli
from data.catalog import read_train_csv
from data.errors import InputError
from data.io import write_text
from matching.evaluation.submission import read_truth, write_submission
from matching.ranking.ensemble import find_models, map5_against, run_ensemble, save_blends
from matching.ranking.postprocess import ColumnPass


def main() -> int:
    p = _cli.parser(__doc__, default_config="ensemble.yaml")
    p.add_argument("--scores", type=Path, help="folder of score matrices (default: <work-dir>/scores)")
    p.add_argument("--out", type=Path, help="submission file (default: <work-dir>/submission.csv)")
    args = p.parse_args()
    cfg = _cli.config_from(args).get("ensemble", {})
    scores_dir = args.scores or args.work_dir / "scores"
    models = find_models(scores_dir)
    if not models:
        raise InputError(scores_dir, "no score matrices (<model>/test.npz); run scripts/score_matrix.py first")
    train = read_train_csv(args.data_dir / "train.csv")
    labels = dict(zip(train["Image"], train["Id"]))
    post_cfg = dict(cfg.get("postprocess", {}))
    auto = post_cfg.get("enabled", True) == "auto"
    post = ColumnPass(**dict(post_cfg, enabled=bool(post_cfg.get("enabled", True))))
    result = run_ensemble(scores_dir, models, cfg.get("weights"), labels, mode=cfg.get("mode", "sum"),
                          post=post, post_auto=auto, new_whale_share=cfg.get("new_whale_share"),
                          tune=bool(cfg.get("tune_weights", False)))
    for note in result.notes:
        print(f"note: {note}")
    print(f"{'model':<16}{'weight':>8}{'OOF MAP@5':>12}")
    for m in result.models:
        oof = "-" if m.oof_map5 is None else f"{m.oof_map5:.4f}"
        print(f"{m.name:<16}{m.weight:>8.2f}{oof:>12}")
    if result.oof_map5 is not None:
        print(f"{'blend':<24}{result.oof_map5:>12.4f}")
        print(f"{'blend + column pass':<24}{result.oof_map5_post:>12.4f}"
              f"{'' if result.post_applied else '  (not applied to the submission)'}")
    print(f"threshold {result.threshold:.4f}; column pass swapped {result.swapped} test queries")
    out = args.out or args.work_dir / "submission.csv"
    write_submission(out, list(result.test.query), result.ranked)
    print(f"wrote {out} ({len(result.ranked)} queries)")
    blends = save_blends(result, args.work_dir / "ensemble")
    print(f"wrote {', '.join(map(str, blends))} (blended matrices, read by scripts/report.py)")
    truth_path = args.data_dir / "truth.csv"
    test_map5 = None
    if truth_path.is_file():
        test_map5 = map5_against(result, read_truth(truth_path), str(truth_path))
        print(f"test MAP@5 {test_map5:.4f} (against {truth_path})")
    summary = {
        "models": [{"name": m.name, "weight": float(m.weight), "oof_map5": _num(m.oof_map5),
                    "threshold": _num(m.threshold)} for m in result.models],
        "oof_map5": _num(result.oof_map5), "oof_map5_post": _num(result.oof_map5_post),
        "post_applied": bool(result.post_applied), "threshold": float(result.threshold),
        "swapped": int(result.swapped), "queries": len(result.ranked), "test_map5": _num(test_map5),
        "truth": None if test_map5 is None else str(truth_path), "notes": list(result.notes),
    }
    write_text(json.dumps(summary, indent=2) + "\n", args.work_dir / "ensemble" / "summary.json")
    return 0


def _num(value) -> float | None:
    return None if value is None else float(value)


if __name__ == "__main__":
    _cli.run(main)
