"""Training speed of the Siamese model on a GPU: fp32 against mixed precision, GPU utilisation with the real
image loader, and one epoch's mining at N = 10,700 (issue: scale out). Runs on the CPU too (``--quick``), to
check the script; the numbers that matter come from a GPU.

1. Model throughput: training steps on image pairs already on the device (no loader), fp32 against
   autocast (bf16 where supported, fp16 with a gradient scaler otherwise) with channels_last; images/s.
2. Loader-fed epoch: the trainer's own pair loader over a synthetic catalog written to a temporary folder,
   with GPU utilisation sampled every 0.1 s (``torch.cuda.utilization``, through NVML).
3. Mining at the real scale: head scores of 10,700 x 10,700 random features on the device plus the sparse
   assignment (``NegativeMiner``, as in bench_pair_mining.py).

    .venv/bin/python bench/bench_train_gpu.py                       # DenseNet121 at 384 px (GPU)
    .venv/bin/python bench/bench_train_gpu.py --quick --device cpu  # a small check of the script
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_pair_mining import LABELS, sample_labels  # noqa: E402
from data.datasets import ImageDataset, PairDataset, make_loader  # noqa: E402
from data.device import autocast, needs_grad_scaler, pick_device  # noqa: E402
from data.synthetic import SynthConfig, write_catalog  # noqa: E402
from matching.similarity.pair_head import score_matrix  # noqa: E402
from siamese.model import build_model  # noqa: E402
from siamese.pairs import NegativeMiner  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(model, opt, scaler, a, b, y, device: torch.device, amp: bool) -> None:
    """One Adam step on a batch of pairs, as the trainer takes it (autocast, loss scaling where fp16)."""
    with autocast(device, amp):
        loss = F.binary_cross_entropy_with_logits(model(a, b).float(), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def train_steps(model, device, size: int, batch: int, steps: int, amp: bool) -> float:
    """Images per second of ``steps`` Adam steps on random pairs resident on the device (after 3 warm-up steps)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(device, amp))
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    a = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    b = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = (torch.arange(batch, device=device) % 2).float()
    model.train()
    for i in range(steps + 3):
        if i == 3:
            sync(device)
            start = time.perf_counter()
        step(model, opt, scaler, a, b, y, device, amp)
    sync(device)
    return 2 * batch * steps / (time.perf_counter() - start)


class UtilSampler(threading.Thread):
    """GPU utilisation (%) every ``period`` seconds until stopped (empty on the CPU or without NVML)."""

    def __init__(self, device: torch.device, period: float = 0.1):
        super().__init__(daemon=True)
        self.device, self.period, self.values, self.done = device, period, [], threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.values.append(float(torch.cuda.utilization(self.device)))
            except Exception:  # noqa: BLE001 - no GPU or no NVML: nothing to sample
                return
            time.sleep(self.period)


def loader_epoch(model, device, size: int, batch: int, photos: int, workers: int | None, amp: bool) -> dict:
    """One epoch of pairs read by the training loader from a synthetic catalog: images/s and GPU utilisation."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SynthConfig(seed=0, individuals=max(8, photos // 6), mean_photos=6.0, test_photos=1)
        write_catalog(Path(tmp) / "cat", cfg, progress=False)
        train = sorted((Path(tmp) / "cat" / "train").glob("*.jpg"))[:photos]
        images = ImageDataset(train, [None] * len(train), size, train=True, seed=0)
        rng = np.random.default_rng(0)
        pairs = np.stack([rng.permutation(len(train)), rng.permutation(len(train))], axis=1)
        loader = make_loader(PairDataset(images, pairs, (rng.random(len(pairs)) < 0.5).astype(np.float32)),
                             batch, workers=workers)
        opt = torch.optim.Adam(model.parameters(), lr=1e-5)
        scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(device, amp))
        model.train()
        sampler = UtilSampler(device)
        sync(device)
        start = time.perf_counter()
        sampler.start()
        for a, b, y in loader:
            a, b, y = (t.to(device, non_blocking=True) for t in (a, b, y))
            if device.type == "cuda":
                a, b = (t.contiguous(memory_format=torch.channels_last) for t in (a, b))
            step(model, opt, scaler, a, b, y, device, amp)
        sync(device)
        seconds = time.perf_counter() - start
        sampler.done.set()
        sampler.join()
    util = sampler.values[5:] or sampler.values  # the first samples catch the workers starting
    return {"images_per_s": round(2 * len(pairs) / seconds, 1), "seconds": round(seconds, 2),
            "gpu_util_mean": round(float(np.mean(util)), 1) if util else None, "util_samples": len(util)}


def mining_epoch(model, device, n: int, budget_mb: float) -> dict:
    """Head scores of ``n`` x ``n`` random features on the device, then the sparse assignment of one epoch."""
    labels = sample_labels(LABELS, n, np.random.default_rng(0)) if LABELS.is_file() else \
        np.repeat(np.arange(n // 4), 4)
    feats = np.maximum(np.random.default_rng(1).standard_normal((len(labels), model.branch.out_dim),
                                                                dtype=np.float32) + 0.5, 0)
    sync(device)
    start = time.perf_counter()
    scores = score_matrix(model.head, feats, feats, device=device, budget_mb=budget_mb)
    sync(device)
    score_s = time.perf_counter() - start
    start = time.perf_counter()
    NegativeMiner(labels.astype(str), sparse_k=16).mine(scores, 0.5, np.random.default_rng(2))
    return {"n": len(labels), "score_s": round(score_s, 2), "assign_s": round(time.perf_counter() - start, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--branch", default="densenet121")
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--batch", type=int, default=32, help="pairs per step")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--photos", type=int, default=1024, help="photos in the loader-fed epoch")
    p.add_argument("--workers", type=int, help="DataLoader workers (default: the project's default)")
    p.add_argument("--mining-n", type=int, default=10_700)
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    args = p.parse_args()
    if args.quick:
        args.branch, args.size, args.batch, args.steps, args.photos, args.mining_n = \
            "resnet18", 64, 4, 2, 24, 600
    device = pick_device(args.device)
    torch.manual_seed(0)
    model = build_model({"branch": args.branch, "pretrained": False}).to(device)
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "branch": args.branch, "size": args.size, "batch_pairs": args.batch}
    out["fp32_images_per_s"] = round(train_steps(model, device, args.size, args.batch, args.steps, False), 1)
    out["amp_images_per_s"] = round(train_steps(model, device, args.size, args.batch, args.steps, True), 1)
    out["amp_speedup"] = round(out["amp_images_per_s"] / out["fp32_images_per_s"], 2)
    out["loader_epoch"] = loader_epoch(model, device, args.size, args.batch, args.photos, args.workers, True)
    out["mining"] = mining_epoch(model, device, args.mining_n, 2048 if device.type == "cuda" else 256)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
