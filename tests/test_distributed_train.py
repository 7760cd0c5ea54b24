"""Training under torchrun (two gloo processes on the CPU) takes the steps of one process, and resumes in one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from data.checkpoint import load_checkpoint
from data.distributed import Shards

ROOT = Path(__file__).resolve().parents[1]
STAGE32 = {"size": 32, "blocks": [{"epochs": 1, "lr": 1e-3, "K": 1000, "freeze_branch": True, "batch": 8},
                                  {"epochs": 2, "lr": 1e-3, "K": 0.5, "freeze_branch": False, "batch": 6}]}
STAGE40 = {"size": 40, "blocks": [{"epochs": 1, "lr": 5e-4, "K": 0.5, "freeze_branch": False, "batch": 7}]}


def _config(path: Path, stages: list, margin_weight: float = 0.0) -> Path:
    # Batch norm frozen: with it learning, each process would normalise by the statistics of its own share.
    cfg = {"model": {"name": "tiny", "branch": "test_efficientnet", "pretrained": False, "head_hidden": 8,
                     "normalize": True, "head_init": "cosine", "arc_s": 10.0},
           "loss": {"margin_weight": margin_weight},
           "train": {"seed": 5, "workers": 0, "feature_batch": 16, "sparse_k": None, "freeze_bn": True,
                     "validate_start": True, "stages": stages}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(catalog: Path, work: Path, config: Path, procs: int = 1, resume: bool = False):
    script = [str(ROOT / "scripts" / "train_fold.py"), "0", "--data-dir", str(catalog), "--work-dir", str(work),
              "--config", str(config)] + (["--resume"] if resume else [])
    if procs == 1:
        cmd = [sys.executable, *script]
    else:
        torchrun = Path(sys.executable).with_name("torchrun")
        if not torchrun.is_file():
            pytest.skip("torchrun is not installed beside this python")
        cmd = [str(torchrun), "--standalone", "--nproc_per_node", str(procs), *script]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _same_weights(a: Path, b: Path, atol: float) -> None:
    sa, sb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=atol, msg=key)


@pytest.mark.parametrize("n,batch,world", [(14, 6, 2), (5, 8, 3), (2, 7, 4), (0, 3, 2)])
def test_batch_shares_of_all_ranks_make_up_the_single_process_batches(n, batch, world):
    shares = [Shards(r, world).batches(n, batch) for r in range(world)]
    single = [list(range(s, min(s + batch, n))) for s in range(0, n, batch)]
    assert all(len(s) == len(single) for s in shares)
    for j, expected in enumerate(single):
        assert sorted(i for s in shares for i in s[j][0]) == expected
        assert all(s[j][1] == len(expected) for s in shares)


def test_two_processes_train_as_one_and_one_process_resumes_their_run(tiny_catalog, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    short = _config(tmp_path / "short.yaml", [STAGE32])
    full = _config(tmp_path / "full.yaml", [STAGE32, STAGE40])
    _train(tiny_catalog, one, full)
    done = _train(tiny_catalog, two, short, procs=2)
    assert "x 2 processes" in done.stdout
    run1, run2 = one / "runs" / "tiny" / "fold0", two / "runs" / "tiny" / "fold0"
    m1, m2 = pd.read_csv(run1 / "32px" / "metrics.csv"), pd.read_csv(run2 / "32px" / "metrics.csv")
    assert len(m1) == len(m2) == 4  # before training, one frozen epoch, two epochs of the branch
    for col in ("loss", "val_map5", "threshold"):
        np.testing.assert_allclose(m1[col].to_numpy(float), m2[col].to_numpy(float), rtol=0, atol=2e-4,
                                   err_msg=col)
    _same_weights(run1 / "32px" / "last.pt", run2 / "32px" / "last.pt", atol=2e-4)
    assert not list(two.rglob("*.part*"))
    # the two-process run, extended by a stage, continues in one process and ends where the single run did
    shutil.copy(full, tmp_path / "resume.yaml")
    _train(tiny_catalog, two, tmp_path / "resume.yaml", resume=True)
    _same_weights(run1 / "40px" / "best.pt", run2 / "40px" / "best.pt", atol=5e-4)
    np.testing.assert_allclose(pd.read_csv(run1 / "40px" / "metrics.csv")["loss"],
                               pd.read_csv(run2 / "40px" / "metrics.csv")["loss"], rtol=0, atol=5e-4)


def test_two_processes_train_the_margin_classifier_as_one(tiny_catalog, tmp_path):
    """loss.margin_weight on a frozen block (gradients summed by hand) and image blocks (DistributedDataParallel)."""
    config = _config(tmp_path / "margin.yaml", [STAGE32], margin_weight=1.0)
    _train(tiny_catalog, tmp_path / "one", config)
    _train(tiny_catalog, tmp_path / "two", config, procs=2)
    run1, run2 = (tmp_path / w / "runs" / "tiny" / "fold0" / "32px" for w in ("one", "two"))
    _same_weights(run1 / "last.pt", run2 / "last.pt", atol=2e-4)
    plain = _config(tmp_path / "plain.yaml", [STAGE32])
    _train(tiny_catalog, tmp_path / "plain", plain)
    m1, m2 = load_checkpoint(run1 / "last.pt")["margin_head"], load_checkpoint(run2 / "last.pt")["margin_head"]
    torch.testing.assert_close(m1["weight"], m2["weight"], rtol=0, atol=2e-4)
    head = load_checkpoint(tmp_path / "plain" / "runs" / "tiny" / "fold0" / "32px" / "last.pt")["model"]
    assert not torch.allclose(load_checkpoint(run1 / "last.pt")["model"]["head.combine.weight"],
                              head["head.combine.weight"], atol=1e-4)  # the classifier did change the training
