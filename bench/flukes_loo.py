"""Leave one out on real humpback flukes: every photo of an individual seen more than once, queried against the
rest of the catalog, with each untrained matcher on the fluke crops of ``predict_bbox.py``.

Steps (each a project command, so the table is what a user gets):
  1. ``predict_bbox.py`` with the box detectors of ``--box-model`` (``<dir>/bbox/fold<k>.pt``, e.g. the demo's
     work folder: trained on synthetic flukes only) boxes every photo of ``--data-dir``;
  2. ``score_matrix.py --oof-queries`` scores each member on the leave-one-out queries (every photo of an
     individual with 2+ photos, against the catalog without itself): SIFT keypoints, ALIKED and DISK with
     LightGlue on every pair (brute force: the catalog is small), ALIKED mutual nearest neighbours;
  3. the rank of the query's own individual among the catalog's individuals (best photo per individual).

  .venv/bin/python bench/flukes_loo.py --box-model /tmp/s16/demo_work --out /tmp/flukes   # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.catalog import NEW_WHALE  # noqa: E402
from matching.matrix import load_matrix  # noqa: E402
from matching.ranking.rank import WhaleGroups, whale_best  # noqa: E402

MEMBERS = {  # name under scores/ -> score_matrix.py flags
    "keypoints": ["--keypoints", "on", "--local", "off"],
    "aliked_lightglue": ["--local", "on", "--set", "local.name=aliked_lightglue", "--set", "local.shortlist.by=null"],
    "disk_lightglue": ["--local", "on", "--set", "local.name=disk_lightglue", "--set", "local.extractor=disk",
                       "--set", "local.shortlist.by=null"],
    "aliked_mnn": ["--local", "on", "--set", "local.name=aliked_mnn", "--set", "local.matcher=mnn"],
}


def own_rank(scores: np.ndarray, gallery_ids: np.ndarray, own: str) -> int:
    """1-based rank of ``own`` among the gallery's individuals, each scored by its best photo (ties: by name)."""
    groups = WhaleGroups.from_labels(gallery_ids)
    best = whale_best(scores[None, :], groups)[0]
    order = groups.labels[np.argsort(-best, kind="stable")]
    return int(np.flatnonzero(order == own)[0]) + 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "humpback_flukes")
    p.add_argument("--box-model", type=Path, required=True, help="work folder holding bbox/fold<k>.pt")
    p.add_argument("--out", type=Path, required=True, help="work folder of this benchmark")
    args = p.parse_args()
    py = sys.executable
    catalog = args.out / "catalog"
    (catalog / "test").mkdir(parents=True, exist_ok=True)
    for name in ("train", "train.csv"):
        link = catalog / name
        if not link.exists():
            link.symlink_to((args.data_dir / name).resolve())
    train = pd.read_csv(catalog / "train.csv")
    first = catalog / "test" / f"query_{train['Image'].iloc[0]}"  # score_matrix.py scores a test folder too
    if not first.exists():
        first.symlink_to((args.data_dir / "train" / train["Image"].iloc[0]).resolve())
    if not (catalog / "boxes.csv").is_file():
        subprocess.run([py, str(ROOT / "scripts" / "predict_bbox.py"), "--data-dir", str(catalog),
                        "--work-dir", str(args.box_model), "--out", str(catalog / "boxes.csv")], check=True)
    counts = train[train["Id"] != NEW_WHALE]["Id"].value_counts()
    queries = int(counts[counts >= 2].sum())
    work = args.out / "work"
    rows = {}
    for member, flags in MEMBERS.items():
        if not (work / "scores" / member / "oof.npz").is_file():
            subprocess.run([py, str(ROOT / "scripts" / "score_matrix.py"), "--data-dir", str(catalog), "--work-dir",
                            str(work), "--oof-queries", str(queries), *flags], check=True)
        m = load_matrix(work / "scores" / member / "oof.npz")
        ids = train.set_index("Image")["Id"]
        gallery_ids = ids.loc[m.gallery].to_numpy()
        for i, q in enumerate(m.query):
            keep = m.gallery != q
            rows.setdefault(q, {"whale": ids[q]})[member] = own_rank(m.scores[i, keep], gallery_ids[keep], ids[q])
    table = pd.DataFrame.from_dict(rows, orient="index").sort_values("whale")
    cols = ["whale", *MEMBERS]
    print("| photo | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
    for name, row in table.iterrows():
        print(f"| {name[:8]} | " + " | ".join(str(row[c]) for c in cols) + " |")
    print("rank 1:", {m: f"{int((table[m] == 1).sum())}/{len(table)}" for m in MEMBERS})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
