"""Thread pools sized from the CPUs this process may use, set once per script (``--threads``).

Every CPU stage runs its work in some pool: torch's intra-op pool (convolutions, matrix products of features,
LightGlue), OpenCV's (SIFT, MAGSAC), the BLAS pool of numpy/scipy, and DataLoader workers. Left alone each sizes
itself from the machine's core count, not from the CPUs this process is allowed (``os.sched_getaffinity``: a
container or ``taskset`` limit), and the pools' threads spin while they wait for each other: on 2 cores with one
taken by another process that turned 1 s of keypoint matching into 8-14 s. So here every pool gets the same size,
and waiting threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``, set by :func:`passive_waits` before torch
is loaded, as ``scripts/_cli.py`` does).
"""

from __future__ import annotations

import os

ENV = "WHALE_THREADS"  # the size a parent process chose, for its children
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0", "GOMP_SPINCOUNT": "0"}


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def passive_waits() -> None:
    """Let the OpenMP threads of torch and BLAS sleep when they wait (unless the user set otherwise); read by the
    OpenMP runtime when it loads, so call before importing torch or numpy."""
    for key, value in PASSIVE.items():
        os.environ.setdefault(key, value)


def configure_threads(threads: int | None = None) -> int:
    """Size torch's, OpenCV's and BLAS's pools to ``threads`` (default: ``$WHALE_THREADS``, else
    :func:`usable_cpus`); returns it. Child processes (DataLoader workers, the steps of a chain) inherit the size
    through the environment."""
    n = int(threads or os.environ.get(ENV) or usable_cpus())
    if n < 1:
        raise ValueError(f"threads must be at least 1, not {n}")
    for key in (ENV, "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[key] = str(n)
    import cv2
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # only settable before the first parallel work of the process
        pass
    cv2.setNumThreads(n)
    threadpool_limits(n)
    return n
