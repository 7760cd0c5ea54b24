"""Each CPU stage alone and with another process busy on one of the cores, with the thread pools as the scripts
size them (data/threads.py: pools from the CPUs this process may use, waiting threads asleep) and as they were
before (each library's own default, spinning OpenMP threads).

Stages, on real right-whale photos (../shared/data/right_whale): branch features (frozen EfficientNet-Lite0,
torch convolutions), SIFT keypoints (OpenCV), keypoint matching (torch ratio test + MAGSAC), ALIKED features,
LightGlue pairs, mutual-NN matrix, ranking (numpy). Every stage runs in a fresh process; the busy process is a
Python loop pinned to the last CPU (taskset).

    .venv/bin/python bench/bench_threads.py                 # the table; --json FILE to keep it
    .venv/bin/python bench/bench_threads.py --stage sift --mode new   # one stage, one process (used inside)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "right_whale" / "train"
STAGES = ("features", "sift", "keypoint_matching", "aliked", "lightglue", "mnn", "ranking")


def _photos(n: int) -> list[Path]:
    found = sorted(PHOTOS.glob("*.jpg"))[:n]
    if len(found) < n:
        raise SystemExit(f"{PHOTOS}: needs {n} photos, found {len(found)}")
    return found


def run_stage(stage: str) -> float:
    """Seconds of one stage's work (its set-up not counted)."""
    import numpy as np

    if stage == "features":
        from siamese.infer import compute_features
        from siamese.model import build_model

        model = build_model({"name": "b", "branch": "efficientnet_lite0", "pretrained": True, "in_chans": 3}).eval()
        paths = _photos(48)
        start = time.perf_counter()
        compute_features(model.branch, paths, [None] * len(paths), 192, batch=16, workers=0, desc="features")
        return time.perf_counter() - start
    if stage in ("sift", "keypoint_matching"):
        from matching.similarity.keypoints import KeypointSettings, extract, inlier_matrix

        s = KeypointSettings()
        paths = _photos(60 if stage == "sift" else 120)
        start = time.perf_counter()
        kp = extract(paths, [None] * len(paths), [p.name for p in paths], s)
        if stage == "sift":
            return time.perf_counter() - start
        start = time.perf_counter()
        inlier_matrix(kp.take(slice(0, 6)), kp, s)
        return time.perf_counter() - start
    if stage in ("aliked", "lightglue", "mnn"):
        from matching.similarity.local_features import LocalSettings, extract_local, load_extractor
        from matching.similarity.local_match import lightglue_counts, load_matcher, mnn_matrix

        s = LocalSettings.from_section({})
        paths = _photos(16 if stage == "aliked" else 60)
        extractor = load_extractor(s.extractor, s.max_keypoints)
        start = time.perf_counter()
        feats = extract_local(extractor, paths, [None] * len(paths), [p.name for p in paths], s)
        if stage == "aliked":
            return time.perf_counter() - start
        if stage == "mnn":
            start = time.perf_counter()
            for _ in range(5):
                mnn_matrix(feats.take(slice(0, 12)), feats)
            return time.perf_counter() - start
        matcher = load_matcher(s.extractor)
        pairs = np.stack([np.arange(30) % 6, 6 + np.arange(30)], 1)
        start = time.perf_counter()
        lightglue_counts(matcher, feats, feats, pairs, batch=1)
        return time.perf_counter() - start
    if stage == "ranking":
        from matching.ranking.rank import rank_queries, tune_threshold

        rng = np.random.default_rng(0)
        scores = rng.random((1500, 3000), dtype=np.float32)
        labels = [f"w{i % 700}" for i in range(3000)]
        start = time.perf_counter()
        tune_threshold(scores[:400], labels, [f"w{i % 900}" for i in range(400)])
        rank_queries(scores, labels, 0.9)
        np.linalg.svd(scores[:600, :600])
        return time.perf_counter() - start
    raise SystemExit(f"unknown stage {stage!r}")


def child(stage: str, mode: str, threads: int | None) -> None:
    sys.path.insert(0, str(ROOT))
    if mode == "new":
        from data.threads import configure_threads, passive_waits

        passive_waits()
        configure_threads(threads)
    print(json.dumps({"seconds": run_stage(stage)}))


def measure(stage: str, mode: str, busy: bool, threads: int | None) -> float:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "WHALE_THREADS", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    hog = None
    if busy:
        last = max(os.sched_getaffinity(0))
        hog = subprocess.Popen(["taskset", "-c", str(last), sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
    try:
        cmd = [sys.executable, __file__, "--stage", stage, "--mode", mode]
        cmd += ["--threads", str(threads)] if threads else []
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])["seconds"]
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=STAGES)
    p.add_argument("--mode", choices=("new", "old"), default="new")
    p.add_argument("--threads", type=int)
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.stage:
        child(args.stage, args.mode, args.threads)
        return 0
    rows = []
    for stage in args.stages:
        row = {"stage": stage}
        for mode in ("old", "new"):
            alone = measure(stage, mode, False, args.threads)
            busy = measure(stage, mode, True, args.threads)
            row.update({f"{mode}_alone": round(alone, 2), f"{mode}_busy": round(busy, 2),
                        f"{mode}_ratio": round(busy / alone, 2)})
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"{'stage':<18} {'old alone':>9} {'old busy':>9} {'ratio':>6} "
          f"{'new alone':>9} {'new busy':>9} {'ratio':>6}")
    for r in rows:
        print(f"{r['stage']:<18} {r['old_alone']:>9} {r['old_busy']:>9} {r['old_ratio']:>6} "
              f"{r['new_alone']:>9} {r['new_busy']:>9} {r['new_ratio']:>6}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
