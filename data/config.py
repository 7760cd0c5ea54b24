"""YAML configs that inherit from a base file (``base: other.yaml``) and take ``key.sub=value`` overrides,
validated against the typed schema of :mod:`data.settings` and returned with every default filled in."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from data.errors import InputError
from data.settings import ROOTS, Settings, check

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"


def deep_merge(base: dict, top: dict) -> dict:
    """A new dict: ``top`` over ``base``, merging nested dicts key by key (lists are replaced)."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path, child: Path | None = None) -> dict:
    if not path.is_file():
        raise InputError(path, "config file not found" + (f" (the base: of {child})" if child else ""))
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(path, f"not valid YAML ({str(err).splitlines()[0]})") from None
    if loaded is None:
        raise InputError(path, "is empty (a config needs at least one setting, or base: another file)")
    if not isinstance(loaded, dict):
        raise InputError(path, "a config must be a YAML mapping at the top level")
    return loaded


def _validated(tree: dict, schema: type, source: str | Path, *, complete: bool) -> dict:
    """``tree`` checked against ``schema``; a tree that only fits another root says so in the error."""
    try:
        return check(tree, schema, source, complete=complete)
    except InputError as err:
        for other, what in ROOTS.items():
            if other is not schema:
                try:
                    check(tree, other, source, complete=False)
                except InputError:
                    continue
                problem = err.problem.split(" (did you mean ")[0]
                raise InputError(source, f"{problem}; is this {what}?") from None
        raise


def load_config(path: str | Path, overrides: list[str] | None = None, schema: type = Settings, *,
                complete: bool = True) -> dict[str, Any]:
    """Read ``path``, resolving ``base:`` chains relative to each file, then apply ``key=value`` overrides.

    Each file and each override is checked against ``schema`` (:class:`data.settings.Settings`, or
    :class:`data.settings.Bbox` for the box detector), so a bad key names the file or ``--set`` it came from;
    the result is a plain dict with every key of the schema, defaults filled in (with ``complete`` false: only
    the keys the files and overrides set, checked the same way)."""
    path = Path(path)
    if not path.is_absolute() and not path.exists() and (CONFIG_DIR / path).exists():
        path = CONFIG_DIR / path
    seen: list[Path] = []
    layers: list[dict] = []
    current: Path | None = path.resolve()
    child: Path | None = None
    while current is not None:
        if current in seen:
            raise InputError(current, "config inherits from itself through 'base:'")
        seen.append(current)
        layer = _read_yaml(current, child)
        base = layer.pop("base", None)
        if base is not None and (not isinstance(base, str) or not base.strip()):
            raise InputError(current, f"base: must name another config file (a string), got {base!r}")
        layers.append(_validated(layer, schema, current, complete=False))
        child = current
        current = (current.parent / base).resolve() if base else None
    cfg: dict[str, Any] = {}
    for layer in reversed(layers):
        cfg = deep_merge(cfg, layer)
    cfg = _validated(cfg, schema, path, complete=complete)
    for item in overrides or []:
        apply_override(cfg, item, schema)
        # what an override replaced whole may lack a required key
        cfg = check(cfg, schema, f"--set {item}", complete=complete)
    return cfg


def apply_override(cfg: dict, item: str, schema: type | None = Settings) -> None:
    """Set ``a.b.c=value`` in place; the value is parsed as YAML (numbers, lists, booleans). With a
    ``schema`` the key and value are checked first (the sections the override touches; no defaults added)."""
    if "=" not in item:
        raise InputError(None, f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise InputError(None, f"override {item!r} has an empty key")
    source = f"--set {item}"
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise InputError(source, f"the value is not valid YAML ({str(err).splitlines()[0]})") from None
    if schema is not None:
        tree: Any = value
        for part in reversed(parts):
            tree = {part: tree}
        value = check(tree, schema, source, complete=False)
        for part in parts:
            value = value[part]
    node = cfg
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
