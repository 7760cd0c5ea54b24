"""Blend the score matrices of the trained models, rank with new_whale, post-process, write submission.csv.

Reads <work-dir>/scores/<model>/{test,oof}.npz (scripts/score_matrix.py) and train.csv of --data-dir (the
truth of the out-of-fold rows); prints the out-of-fold MAP@5 of each model and of the blend with and without
the column-wise pass; writes <work-dir>/submission.csv and the blended matrices <work-dir>/ensemble/{test,oof}.npz
(read by scripts/report.py). When --data-dir has truth.csv (the synthetic
catalog), prints the test MAP@5 too.
"""

from __future__ import annotations

from pathlib import Path

import _cli
from data.catalog import read_train_csv
from data.errors import InputError
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
    if truth_path.is_file():
        print(f"test MAP@5 {map5_against(result, read_truth(truth_path), str(truth_path)):.4f} (against {truth_path})")
    return 0


if __name__ == "__main__":
    _cli.run(main)
