"""Contiguous (NCHW) against channels-last batches on this machine's CPU, for the three convolution nets the CPU
paths run: the frozen Lite0 grid trunk of the demo (inference, the trunk features), the kernel CNN of the
Omniglot config (a training step) and the box detector (a training step, and inference). Prints one JSON line per
measurement: seconds per call (the median of --repeats after a warm-up) in each layout and their ratio.

    .venv/bin/python bench/bench_layout.py                # ~2 min on 2 cores
    .venv/bin/python bench/bench_layout.py --repeats 1    # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bbox.detector import build_detector  # noqa: E402
from data.config import load_config  # noqa: E402
from data.settings import Settings, check  # noqa: E402
from siamese.model import build_model  # noqa: E402

CL = torch.channels_last


def seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: oneDNN picks its kernels on the first call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(name: str, plain: float, last: float) -> None:
    print(json.dumps({"what": name, "nchw_s": round(plain, 4), "channels_last_s": round(last, 4),
                      "speedup": round(plain / last, 2)}), flush=True)


def trunk(repeats: int) -> None:
    cfg = check(load_config(ROOT / "configs" / "siamese" / "demo.yaml"), Settings)
    branch = build_model(cfg["model"]).branch.eval()
    x = torch.rand(64, 3, 192, 192)
    with torch.inference_mode():
        plain = seconds(lambda: branch(x), repeats)
        last = seconds(lambda: branch(x.contiguous(memory_format=CL)), repeats)
    report("demo trunk (Lite0, 6 stages, grid), 64 images at 192 px, inference", plain, last)


def kernel_step(repeats: int) -> None:
    cfg = check(load_config(ROOT / "configs" / "siamese" / "omniglot.yaml"), Settings)
    branch = build_model(cfg["model"]).branch.train()
    x = torch.rand(128, 1, 64, 64)

    def step(images: torch.Tensor) -> None:
        branch.zero_grad()
        branch(images).sum().backward()

    plain = seconds(lambda: step(x), repeats)
    last = seconds(lambda: step(x.contiguous(memory_format=CL)), repeats)
    report("kernel CNN (omniglot.yaml), 128 grey images at 64 px, forward + backward", plain, last)


def detector(repeats: int) -> None:
    torch.manual_seed(0)
    model = build_detector()
    images = [torch.rand(3, 200, 320) for _ in range(8)]
    targets = [{"boxes": torch.tensor([[20.0, 20.0, 200.0, 150.0]]), "labels": torch.tensor([1])}] * 4

    def step() -> None:
        model.zero_grad()
        sum(model(images[:4], targets).values()).backward()

    def infer() -> None:
        with torch.inference_mode():
            model(images)

    model.train()
    plain_step = seconds(step, repeats)
    model.eval()
    plain_infer = seconds(infer, repeats)
    model.to(memory_format=CL)
    model.train()
    last_step = seconds(step, repeats)
    model.eval()
    last_infer = seconds(infer, repeats)
    report("box detector (configs/bbox/default.yaml), 4 photos of 320 x 200, training step", plain_step, last_step)
    report("box detector, 8 photos of 320 x 200, inference", plain_infer, last_infer)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement; default: %(default)s")
    args = p.parse_args()
    print(json.dumps({"threads": torch.get_num_threads()}))
    trunk(args.repeats)
    kernel_step(args.repeats)
    detector(args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
