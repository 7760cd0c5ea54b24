"""Blend the score matrices of the trained models, rank with new_whale, post-process, write submission.csv.

Reads <work-dir>/scores/<model>/{test,oof}.npz (scripts/score_matrix.py) and train.csv of --data-dir (the
truth of the out-of-fold rows); prints the out-of-fold MAP@5 of each model and of the blend with and without
the column-wise pass; writes <work-dir>/submission.csv and the blended matrices <work-dir>/ensemble/{test,oof}.npz
(read by scripts/report.py), and <work-dir>/candidates.csv: per query its five labels with rank, best pair score
and the catalog photo of that score (Image,rank,Id,score,photo; for import elsewhere). When --data-dir has
truth.csv (the synthetic catalog), or with --truth, prints the test MAP@5 too.

Writes what it prints to <work-dir>/ensemble/summary.json as well (read by scripts/run_chain.py; the fields:
matching.ranking.ensemble.ensemble_summary).
"""

from __future__ import annotations

import json
from pathlib import Path

import _cli
from data.catalog import read_train_csv
from data.errors import InputError
from data.io import write_csv, write_text
from matching.evaluation.submission import candidates_frame, read_truth, write_submission
from matching.ranking.ensemble import (
    ensemble_from_config,
    ensemble_summary,
    find_models,
    map5_against,
    save_blends,
    summary_lines,
)


def main() -> int:
    p = _cli.parser(__doc__, default_config="ensemble.yaml")
    p.add_argument("--scores", type=Path, help="folder of score matrices (default: <work-dir>/scores)")
    p.add_argument("--out", type=Path, help="submission file (default: <work-dir>/submission.csv)")
    p.add_argument("--truth", type=Path, help="truth of the test queries (default: <data-dir>/truth.csv when present)")
    args = p.parse_args()
    cfg = _cli.config_from(args)["ensemble"]
    scores_dir = args.scores or args.work_dir / "scores"
    models = find_models(scores_dir)
    if not models:
        raise InputError(scores_dir, "no score matrices (<model>/test.npz); run scripts/score_matrix.py first")
    train = read_train_csv(args.data_dir / "train.csv")
    result = ensemble_from_config(scores_dir, models, cfg, dict(zip(train["Image"], train["Id"])))
    for note in result.notes:
        print(f"note: {note}")
    out = args.out or args.work_dir / "submission.csv"
    write_submission(out, list(result.test.query), result.ranked)
    labels = dict(zip(train["Image"], train["Id"]))
    candidates = write_csv(candidates_frame(result.test.query, result.test.gallery, result.test.scores,
                                            [labels[g] for g in result.test.gallery], result.ranked, result.threshold),
                           out.with_name("candidates.csv"))
    blends = save_blends(result, args.work_dir / "ensemble")
    truth_path = args.truth or args.data_dir / "truth.csv"
    if args.truth and not truth_path.is_file():
        raise InputError(truth_path, "truth file not found")
    test_map5 = map5_against(result, read_truth(truth_path), str(truth_path)) if truth_path.is_file() else None
    summary = ensemble_summary(result, test_map5, str(truth_path))
    print("\n".join(summary_lines(summary)))
    print(f"wrote {out} ({len(result.ranked)} queries) and {candidates} (five candidates each)")
    print(f"wrote {', '.join(map(str, blends))} (blended matrices, read by scripts/report.py)")
    if test_map5 is not None:
        print(f"test MAP@5 {test_map5:.4f} (against {truth_path})")
    write_text(json.dumps(summary, indent=2) + "\n", args.work_dir / "ensemble" / "summary.json")
    return 0


if __name__ == "__main__":
    _cli.run(main)
