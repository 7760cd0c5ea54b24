"""Scoring split over processes (torchrun, gloo on the CPU) writes the same files as one process: trained models,
keypoint matching and learned local matching."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from data.checkpoint import save_checkpoint
from data.distributed import Shards
from data.io import load_npz
from matching.matrix import load_matrix
from siamese.model import build_model

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"name": "tiny", "branch": "test_efficientnet", "in_chans": 3, "pool": "max", "pretrained": False,
         "weights": None, "head_hidden": 8}


@pytest.mark.parametrize("n,world", [(0, 2), (1, 2), (7, 2), (10, 3), (5, 8)])
def test_row_shards_cover_every_row_once_in_order(n, world):
    rows = [Shards(r, world).rows(n) for r in range(world)]
    assert [i for s in rows for i in range(n)[s]] == list(range(n))
    sizes = [s.stop - s.start for s in rows]
    assert max(sizes) - min(sizes) <= 1


def test_a_single_shard_writes_its_file_directly(tmp_path):
    seen = []
    Shards().assemble(tmp_path / "m.npz", lambda p: seen.append(p), lambda parts, p: pytest.fail("no join"))
    assert seen == [tmp_path / "m.npz"]


def _trained_run(work: Path) -> None:
    torch.manual_seed(0)
    model = build_model(MODEL)
    run = work / "runs" / "tiny" / "fold0"
    cfg = {"model": MODEL, "train": {"stages": [{"size": 32, "blocks": [
        {"epochs": 1, "lr": 1e-3, "K": 1000, "freeze_branch": True, "batch": 8}]}]}}
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    save_checkpoint(run / "32px" / "best.pt", {"model": model.state_dict(), "val_map5": 0.0, "size": 32})


def _score(args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_with_two_processes_writes_the_single_process_matrices(tiny_catalog, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _trained_run(one)
    shutil.copytree(one / "runs", two / "runs")
    script = str(ROOT / "scripts" / "score_matrix.py")
    common = ["--data-dir", str(tiny_catalog), "--budget-mb", "8", "--batch", "8", "--keypoints", "on",
              "--local-matching", "on", "--set", "local.width=64", "--set", "local.max_keypoints=32",
              "--set", "local.shortlist.top=3"]
    single = _score([sys.executable, script, "--work-dir", str(one), *common])
    assert single.returncode == 0, single.stderr
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip("torchrun is not installed beside this python")
    both = _score([str(torchrun), "--standalone", "--nproc_per_node", "2", script, "--work-dir", str(two), *common])
    assert both.returncode == 0, both.stderr[-3000:]
    assert "on 2 processes" in both.stdout and both.stdout.count("wrote") == single.stdout.count("wrote")
    for name in ("fold0_test.npz", "fold0_oof.npz", "test.npz", "oof.npz"):
        a, b = load_matrix(one / "scores" / "tiny" / name), load_matrix(two / "scores" / "tiny" / name)
        assert list(a.query) == list(b.query) and list(a.gallery) == list(b.gallery)
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)
    for name in ("catalog.npz", "test.npz", "oof.npz"):
        fa = load_npz(one / "features" / "tiny" / "fold0" / name)
        fb = load_npz(two / "features" / "tiny" / "fold0" / name)
        assert list(fa["names"]) == list(fb["names"])
        np.testing.assert_allclose(fa["features"], fb["features"], rtol=0, atol=1e-5)
    for name in ("test.npz", "oof.npz"):  # keypoint matching: photos and query rows shared by the processes
        a, b = load_matrix(one / "scores" / "keypoints" / name), load_matrix(two / "scores" / "keypoints" / name)
        assert list(a.query) == list(b.query) and list(a.gallery) == list(b.gallery)
        np.testing.assert_array_equal(a.scores, b.scores)
    for member in ("local", "local_mnn"):  # learned local matching: photos, mutual-NN rows and LightGlue pairs shared
        for name in ("test.npz", "oof.npz"):
            a, b = load_matrix(one / "scores" / member / name), load_matrix(two / "scores" / member / name)
            assert list(a.query) == list(b.query) and list(a.gallery) == list(b.gallery)
            np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)
    pairs = [load_npz(p) for w in (one, two) for p in sorted((w / "features" / "local").glob("pairs_*.npz"))]
    assert len(pairs) == 2 and sorted(pairs[0]["pairs"]) == sorted(pairs[1]["pairs"])  # one pair cache, rank 0's
    leftovers = [p.name for p in two.rglob(".*part*")]
    assert leftovers == []
