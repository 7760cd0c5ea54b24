"""Score every query x gallery pair with the Siamese head, in blocks sized by a memory budget.

The head, per feature d: ``[x*y, x+y, |x-y|, (x-y)^2] -> Linear(4, H) -> ReLU -> Linear(H, 1)``, then a
weighted sum over the D features (``combine``) and a sigmoid. Per feature it depends only on
``s = x+y`` and ``u = |x-y|`` (``x*y = (s^2-u^2)/4``, ``(x-y)^2 = u^2``), so each hidden unit is a
quadratic ``pre_j = (a_j s + b_j) s + (d_j u + c_j) u + e_j`` and the head is
``logit = sum_d w_d sum_j v_j relu(pre_j) + bias``. On the CPU that expression is compiled by
``torch.compile`` (inductor: one vectorised C++ loop over (pair, feature) evaluating the H units in
registers, writing one float per (pair, feature), never [pairs, D, H]); without a working compiler, a
loop over hidden units on cache-sized blocks. On CUDA the block runs under autocast
(``_score_block_cuda``).

Peak memory is the output matrix plus ``budget_mb``, give or take a few MB of allocator slack (which
matters only for tiny budgets): block shapes come from the bytes each path allocates per pair, blocks
are of equal size, and on glibc large blocks are mmapped so that freed ones are not kept. Results
agree with a float64 pair-by-pair evaluation of the head within ``CPU_ATOL`` on the CPU and
``AUTOCAST_ATOL`` under bf16/fp16 autocast (probabilities; features of order 1).
"""

from __future__ import annotations

import ctypes
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

CPU_ATOL = 1e-4
AUTOCAST_ATOL = 3e-2
COMPILE_MIN_ELEMENTS = 1 << 25  # Q*G*D above which compiling pays for itself on the CPU (loop ~3 s, compile ~10 s once)
BLOCK_SHARE = 0.9  # of the budget for a block's tensors; the rest covers allocator slack and small buffers
_CACHE_ELEMENTS = 1 << 14  # eager loop: elements per block array (6 arrays stay in L2)
_COMPILED_BLOCK = (64, 256)  # preferred (queries, gallery) block of the compiled kernel
_CUDA_BLOCK = (256, 1024)

Array = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class HeadParams:
    """The head's weights as plain float32 CPU tensors (``PairHead``'s mlp1, mlp2 and combine)."""

    w1: torch.Tensor  # [H, 4] for inputs (x*y, x+y, |x-y|, (x-y)^2)
    b1: torch.Tensor  # [H]
    w2: torch.Tensor  # [H]
    b2: float
    wc: torch.Tensor  # [D]
    bc: float

    @classmethod
    def from_module(cls, head: nn.Module) -> HeadParams:
        """Read ``head.mlp1`` (Linear(4, H)), ``head.mlp2`` (Linear(H, 1)), ``head.combine`` (Linear(D, 1))."""

        def t(p: torch.Tensor) -> torch.Tensor:
            return p.detach().to("cpu", torch.float32).clone()

        return cls(
            w1=t(head.mlp1.weight),
            b1=t(head.mlp1.bias),
            w2=t(head.mlp2.weight).reshape(-1),
            b2=float(head.mlp2.bias.detach().reshape(())),
            wc=t(head.combine.weight).reshape(-1),
            bc=float(head.combine.bias.detach().reshape(())),
        )

    @property
    def dim(self) -> int:
        return int(self.wc.numel())

    @property
    def hidden(self) -> int:
        return int(self.b1.numel())

    def folded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """``coef`` [5, H] (a, b, c, d, e of the quadratic in s and u), ``v`` [H], ``w`` [D], bias."""
        w0, ws, wu, wu2 = self.w1.unbind(1)
        coef = torch.stack([w0 / 4, ws, wu, wu2 - w0 / 4, self.b1])
        bias = self.b2 * float(self.wc.sum()) + self.bc
        return coef.contiguous(), self.w2.contiguous(), self.wc.contiguous(), bias


def _params(head: nn.Module | HeadParams) -> HeadParams:
    return head if isinstance(head, HeadParams) else HeadParams.from_module(head)


def _block_fused(x: torch.Tensor, y: torch.Tensor, coef: torch.Tensor, v: torch.Tensor, w: torch.Tensor):
    """[bq, bg] head logits without bias. Eagerly this materialises [bq, bg, D, H]: compile it."""
    s = (x[:, None, :] + y[None, :, :])[..., None]
    u = (x[:, None, :] - y[None, :, :]).abs()[..., None]
    pre = (coef[0] * s + coef[1]) * s + (coef[3] * u + coef[2]) * u + coef[4]
    return (torch.relu(pre) * v).sum(-1) @ w


_compiled_block: Callable | None = None


def _compiled() -> Callable:
    global _compiled_block
    if _compiled_block is None:
        _compiled_block = torch.compile(_block_fused, dynamic=True)
    return _compiled_block


def _run_compiled(
    x: torch.Tensor, y: torch.Tensor, coef: torch.Tensor, v: torch.Tensor, w: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """The compiled block on fresh tensors zero-padded to ``shape`` (at least 2 x 2).

    One compiled graph then serves every block (dynamo guards on a view's base and specialises sizes
    0 and 1), and every block allocates the same sizes, so the allocator reuses one block's memory for
    the next instead of growing the heap.
    """
    n_x, n_y = x.shape[0], y.shape[0]
    x_pad = x.new_zeros((max(2, shape[0]), x.shape[1]))
    y_pad = y.new_zeros((max(2, shape[1]), y.shape[1]))
    x_pad[:n_x], y_pad[:n_y] = x, y
    # clone: the compiled graph's output may share storage with its [bq, bg, D] scratch buffer
    return _compiled()(x_pad, y_pad, coef, v, w)[:n_x, :n_y].clone()


def _block_loop(x: torch.Tensor, y: torch.Tensor, coef: list[list[float]], v: list[float], w: torch.Tensor):
    """Same as :func:`_block_fused` with one pass per hidden unit (eager; keep blocks cache-sized)."""
    s = x[:, None, :] + y[None, :, :]
    u = (x[:, None, :] - y[None, :, :]).abs_()
    s2, u2 = s * s, u * u
    acc = torch.zeros_like(s)
    pre = torch.empty_like(s)
    a, b, c, d, e = coef
    for j in range(len(v)):
        torch.mul(s2, a[j], out=pre)
        pre.add_(s, alpha=b[j]).add_(u, alpha=c[j]).add_(u2, alpha=d[j]).add_(e[j]).clamp_(min=0)
        acc.add_(pre, alpha=v[j])
    return acc @ w


def _score_block_naive(p: HeadParams, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[bq, bg] logits the straightforward way: the [pairs, D, 4] inputs through the two Linears."""
    xx, yy = torch.broadcast_tensors(x[:, None, :], y[None, :, :])
    diff = xx - yy
    inputs = torch.stack([xx * yy, xx + yy, diff.abs(), diff * diff], dim=-1)
    hidden = F.relu(F.linear(inputs, p.w1.to(x), p.b1.to(x)))
    per_feature = F.linear(hidden, p.w2.to(x)[None, :], torch.tensor([p.b2], dtype=x.dtype, device=x.device))
    return per_feature[..., 0] @ p.wc.to(x) + p.bc


def _score_block_cuda(p: HeadParams, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[bq, bg] logits under autocast: s, u in ``dtype``; the H units as one low-precision matmul.

    The slot for a fused (Triton) kernel on GPU machines; it uses only torch ops, so it also runs
    under CPU autocast for testing.
    """
    coef, v, w, bias = p.folded()
    with torch.autocast(device_type=x.device.type, dtype=dtype):
        s = (x[:, None, :] + y[None, :, :]).to(dtype)
        u = (x[:, None, :] - y[None, :, :]).abs().to(dtype)
        inputs = torch.stack([s * s, s, u, u * u], dim=-1)
        weight = torch.stack([coef[0], coef[1], coef[2], coef[3]], dim=1).to(x.device)
        hidden = F.relu(F.linear(inputs, weight, coef[4].to(x.device)))
        per_feature = F.linear(hidden, v.to(x.device)[None, :])[..., 0]
    return per_feature.float() @ w.to(x.device) + bias


def _bytes_per_pair(path: str, dim: int, hidden: int) -> int:
    """Bytes a path allocates per pair of a block (its temporaries plus the block's output)."""
    if path == "compiled":
        return 4 * dim + 8
    if path == "loop":
        return 6 * 4 * dim + 8
    if path == "cuda":
        return dim * (4 * 2 + 5 * 2 + 2 * hidden * 2 + 4) + 8
    return dim * 4 * (4 + 2 * hidden + 5) + 8  # naive: inputs, 2 x hidden, diff/sum/per-feature


def block_shape(
    path: str, n_query: int, n_gallery: int, dim: int, hidden: int, budget_mb: float,
    block: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """(queries, gallery) per block for ``path``: its preferred shape, cut to fit the memory budget."""
    max_pairs = max(1, int(BLOCK_SHARE * budget_mb * 2**20) // _bytes_per_pair(path, dim, hidden))
    if block is not None:
        bq, bg = block
    elif path == "compiled":
        bq, bg = _COMPILED_BLOCK
    elif path == "cuda":
        bq, bg = _CUDA_BLOCK
    else:
        pairs = max(1, _CACHE_ELEMENTS // dim)
        bq, bg = max(1, pairs // 64), min(pairs, 64)
    bg = max(1, min(bg, n_gallery, max_pairs))
    bq = max(1, min(bq, n_query, max_pairs // bg))
    return bq, bg


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
_MMAP_THRESHOLD_BYTES = 4 << 20
_heap_limited = False


def _limit_heap_retention() -> None:
    """On glibc, serve allocations of 4 MB and more by mmap, so a freed block goes back to the system.

    By default glibc raises that threshold up to 32 MB as large blocks are freed; blocks below it then
    come from the heap, which fragments and keeps freed blocks, so a long run of blocks could hold
    several of them at once. Process-wide and harmless otherwise; done once.
    """
    global _heap_limited
    if _heap_limited or not sys.platform.startswith("linux"):
        return
    _heap_limited = True
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        pass


def split_evenly(n: int, most: int) -> list[slice]:
    """``n`` items in the fewest slices of at most ``most``, their sizes differing by at most one
    (blocks of nearly equal size let the allocator reuse each block's memory for the next)."""
    count = -(-n // max(1, most))
    bounds = [round(i * n / count) for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _as_tensor(a: Array, name: str) -> torch.Tensor:
    t = torch.from_numpy(a) if isinstance(a, np.ndarray) else a.detach()
    if t.ndim != 2:
        raise ValueError(f"{name} features must be 2-D [n, D], got shape {tuple(t.shape)}")
    return t


def _pick_path(device: torch.device, compile: bool | None, n_elements: int) -> str:
    if device.type == "cuda":
        return "cuda"
    if compile is None:
        compile = n_elements >= COMPILE_MIN_ELEMENTS
    return "compiled" if compile else "loop"


def score_matrix(
    head: nn.Module | HeadParams,
    query: Array,
    gallery: Array,
    *,
    budget_mb: float = 512,
    device: str | torch.device = "cpu",
    block: tuple[int, int] | None = None,
    compile: bool | None = None,
    autocast_dtype: torch.dtype = torch.bfloat16,
    progress: bool = False,
) -> np.ndarray:
    """[Q, G] float32 probability that query i and gallery j show the same whale.

    ``compile`` (CPU only): None compiles when Q*G*D >= ``COMPILE_MIN_ELEMENTS``; a failed compile
    warns and falls back to the eager loop. ``block`` caps the (queries, gallery) block shape.
    """
    p = _params(head)
    q_t, g_t = _as_tensor(query, "query"), _as_tensor(gallery, "gallery")
    for name, t in (("query", q_t), ("gallery", g_t)):
        if t.shape[1] != p.dim:
            raise ValueError(f"{name} features have dimension {t.shape[1]}, the head expects {p.dim}")
    device = torch.device(device)
    n_q, n_g = q_t.shape[0], g_t.shape[0]
    out = np.empty((n_q, n_g), dtype=np.float32)
    if n_q == 0 or n_g == 0:
        return out
    path = _pick_path(device, compile, n_q * n_g * p.dim)
    if path != "cuda":
        _limit_heap_retention()
    coef, v, w, bias = p.folded()
    coef, v, w = coef.to(device), v.to(device), w.to(device)
    coef_list, v_list = coef.tolist(), v.tolist()

    bq, bg = block_shape(path, n_q, n_g, p.dim, p.hidden, budget_mb, block)
    row_blocks, col_blocks = split_evenly(n_q, bq), split_evenly(n_g, bg)
    shape = (max(r.stop - r.start for r in row_blocks), max(c.stop - c.start for c in col_blocks))
    blocks = [(rows, cols) for cols in col_blocks for rows in row_blocks]

    def run_block(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        nonlocal path
        if path == "cuda":
            return _score_block_cuda(p, xb, yb, autocast_dtype)
        if path == "compiled":
            try:
                return _run_compiled(xb, yb, coef, v, w, shape)
            except Exception as err:  # no C++ toolchain, unsupported platform: fall back, keep going
                warnings.warn(f"torch.compile failed ({type(err).__name__}); using the eager loop", stacklevel=3)
                path = "loop"
        tq, tg = block_shape("loop", xb.shape[0], yb.shape[0], p.dim, p.hidden, budget_mb)
        logits = xb.new_empty((xb.shape[0], yb.shape[0]))
        for ti in split_evenly(xb.shape[0], tq):
            for tj in split_evenly(yb.shape[0], tg):
                logits[ti, tj] = _block_loop(xb[ti], yb[tj], coef_list, v_list, w)
        return logits

    with torch.inference_mode():
        y_block, y_cols = None, None
        for rows, cols in tqdm(blocks, desc="score blocks", disable=not progress, leave=False):
            if cols != y_cols:
                y_block, y_cols = g_t[cols].to(device, torch.float32).contiguous(), cols
            xb = q_t[rows].to(device, torch.float32).contiguous()
            probs = torch.sigmoid(run_block(xb, y_block) + bias)
            out[rows, cols] = probs.to("cpu", torch.float32).numpy()
    return out


def score_matrix_naive(
    head: nn.Module | HeadParams,
    query: Array,
    gallery: Array,
    *,
    budget_mb: float = 512,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """The straightforward version (materialises [pairs, D, H]); the benchmark baseline and a reference."""
    p = _params(head)
    q_t, g_t = _as_tensor(query, "query"), _as_tensor(gallery, "gallery")
    device = torch.device(device)
    n_q, n_g = q_t.shape[0], g_t.shape[0]
    out = np.empty((n_q, n_g), dtype=np.float32)
    bq, bg = block_shape("naive", n_q, n_g, p.dim, p.hidden, budget_mb, (n_q, n_g))
    with torch.inference_mode():
        for cols in split_evenly(n_g, bg):
            yb = g_t[cols].to(device, torch.float32)
            for rows in split_evenly(n_q, bq):
                xb = q_t[rows].to(device, torch.float32)
                out[rows, cols] = torch.sigmoid(_score_block_naive(p, xb, yb)).cpu().numpy()
    return out
