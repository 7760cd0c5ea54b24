"""Work split over the processes of ``torchrun``: contiguous row shards, a barrier, and parts assembled on rank 0.

Under ``torchrun --nproc_per_node N`` (or across machines with its rendezvous) every process gets ``RANK``
and ``WORLD_SIZE``; :func:`from_env` joins the process group (NCCL on CUDA, gloo on the CPU). Each rank
then does its shard of the rows, writes it as a part file beside the final one, and rank 0 stacks the parts
in rank order into exactly the file a single process writes. Without ``torchrun`` everything is one shard.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from data.io import load_npz


@dataclass(frozen=True)
class Shards:
    """This process's place among ``world`` processes."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, n: int, rank: int | None = None) -> slice:
        """The contiguous share of ``range(n)`` of ``rank`` (this process by default); sizes differ by at most 1."""
        r = self.rank if rank is None else rank
        return slice(round(r * n / self.world), round((r + 1) * n / self.world))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def part_path(self, path: Path, rank: int | None = None) -> Path:
        r = self.rank if rank is None else rank
        return path.with_name(f".{path.stem}.part{r}of{self.world}{path.suffix}")

    def assemble(self, path: Path, write_part: Callable[[Path], None],
                 join: Callable[[list[Path], Path], None]) -> None:
        """Every rank writes its part (``write_part(part_path)``); rank 0 joins the parts into ``path``
        (``join(parts, path)``) and removes them; all ranks return once ``path`` exists."""
        if self.world == 1:
            write_part(path)
            return
        write_part(self.part_path(path))
        self.barrier()
        if self.main:
            parts = [self.part_path(path, r) for r in range(self.world)]
            try:
                join(parts, path)
            finally:
                for p in parts:
                    p.unlink(missing_ok=True)
        self.barrier()


    def batches(self, n: int, batch: int) -> list[tuple[list[int], int]]:
        """This rank's share of each global batch of ``range(n)``, in order, with the global batch's size.

        The union over ranks of share ``j`` is exactly the single-process batch ``j``, so gradients summed
        over ranks equal the single-process ones; a share may be empty when a batch is smaller than ``world``."""
        out = []
        for start in range(0, n, batch):
            size = min(batch, n - start)
            part = self.rows(size)
            out.append((list(range(start + part.start, start + part.stop)), size))
        return out

    def gather_rows(self, array: np.ndarray) -> np.ndarray:
        """Each rank's rows (its shard of some whole), stacked in rank order, returned on every rank."""
        if self.world == 1:
            return array
        device = _comm_device()
        local = torch.from_numpy(np.ascontiguousarray(array)).to(device)
        sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([len(local)], dtype=torch.int64, device=device))
        counts = [int(c) for c in sizes]
        padded = torch.zeros((max(counts), *local.shape[1:]), dtype=local.dtype, device=device)
        padded[:len(local)] = local
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:c] for p, c in zip(parts, counts)]).cpu().numpy()

    def broadcast(self, array: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
        """Rank 0's ``array`` on every rank (the others pass None)."""
        if self.world == 1:
            return np.asarray(array, dtype=dtype)
        device = _comm_device()
        shape = torch.zeros(8, dtype=torch.int64, device=device)
        if self.main:
            arr = np.ascontiguousarray(array, dtype=dtype)
            shape[0] = arr.ndim
            shape[1:1 + arr.ndim] = torch.tensor(arr.shape, dtype=torch.int64)
        dist.broadcast(shape, 0)
        dims = tuple(int(d) for d in shape[1:1 + int(shape[0])])
        data = torch.from_numpy(arr).to(device) if self.main else \
            torch.empty(dims, dtype=torch.from_numpy(np.zeros(0, dtype)).dtype, device=device)
        dist.broadcast(data, 0)
        return data.cpu().numpy()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over the ranks (float64)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
        dist.all_reduce(t)
        return t.cpu().tolist()


SINGLE = Shards()


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def from_env(device: torch.device) -> Shards:
    """The shards of this process: joins the process group when ``WORLD_SIZE`` > 1 (set by torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Shards(dist.get_rank(), dist.get_world_size())


def local_device(device: torch.device) -> torch.device:
    """On CUDA under torchrun, the GPU of this process (``LOCAL_RANK``); otherwise ``device`` unchanged."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # collectives (NCCL) run on the current device
    return device


def stack_npz_rows(parts: list[Path], keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays of the first part file, with those named ``keys`` stacked along their first axis over all parts."""
    loaded = [load_npz(p) for p in parts]
    return {**loaded[0], **{key: np.concatenate([d[key] for d in loaded]) for key in keys}}
