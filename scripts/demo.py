"""The whole job on the built-in synthetic catalog: generate, fold, box, train two folds, score, blend, submit,
and write the match-review page.

Each step runs the project's own script (as a user would) and is skipped when its output already exists,
unless --force. Ends with a summary: MAP@5 of submission.csv against truth.csv, the raw-pixel baseline,
and the time of each step.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import _cli
from matching.chain import demo_steps, run_steps
from matching.evaluation.baseline import raw_pixel_baseline
from matching.evaluation.submission import evaluate_submission

SCRIPTS = Path(__file__).resolve().parent


def main() -> int:
    p = _cli.Parser(description=__doc__)
    p.add_argument("--data-dir", type=Path, default=_cli.DEFAULT_DATA_DIR, help="default: %(default)s")
    p.add_argument("--work-dir", type=Path, default=_cli.DEFAULT_WORK_DIR, help="default: %(default)s")
    p.add_argument("--config", type=Path, default=_cli.REPO_ROOT / "configs" / "siamese" / "demo.yaml",
                   help="model config for the folds (Siamese or embedding family); default: %(default)s")
    p.add_argument("--folds", type=int, nargs="+", default=[0, 1], help="folds to train; default: 0 1")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic catalog; default: %(default)s")
    p.add_argument("--force", action="store_true", help="redo every step (removes the demo's data and work dirs)")
    args = p.parse_args()
    data, work = args.data_dir, args.work_dir
    if args.force:
        for folder in (data, work):
            if folder.exists():
                shutil.rmtree(folder)
    from data.config import load_config

    steps = demo_steps(args.config, load_config(args.config), data, work, args.folds, seed=args.seed)
    code, timings = run_steps(steps, SCRIPTS)
    if code != 0:
        return code

    submission_map = evaluate_submission(work / "submission.csv", data / "truth.csv")
    baseline = raw_pixel_baseline(data)
    print("\n== summary")
    for name, seconds in timings:
        print(f"  {name:<22} {'reused' if seconds is None else f'{seconds:7.1f} s'}")
    print(f"  raw-pixel cosine baseline MAP@5 {baseline.map5:.4f}")
    print(f"  submission {work / 'submission.csv'}; review page {work / 'report' / 'index.html'}")
    print(f"MAP@5 {submission_map:.4f}")
    return 0


if __name__ == "__main__":
    _cli.run(main)
