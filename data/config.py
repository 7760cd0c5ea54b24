"""YAML configs that inherit from a base file (``base: other.yaml``) and take ``key.sub=value`` overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from data.errors import InputError

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


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise InputError(path, "config file not found")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(path, f"not valid YAML ({str(err).splitlines()[0]})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise InputError(path, "a config must be a YAML mapping at the top level")
    return loaded


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read ``path``, resolving ``base:`` chains relative to each file, then apply ``key=value`` overrides."""
    path = Path(path)
    if not path.is_absolute() and not path.exists() and (CONFIG_DIR / path).exists():
        path = CONFIG_DIR / path
    seen: list[Path] = []
    layers: list[dict] = []
    current: Path | None = path.resolve()
    while current is not None:
        if current in seen:
            raise InputError(current, "config inherits from itself through 'base:'")
        seen.append(current)
        layer = _read_yaml(current)
        base = layer.pop("base", None)
        layers.append(layer)
        current = (current.parent / base).resolve() if base else None
    cfg: dict[str, Any] = {}
    for layer in reversed(layers):
        cfg = deep_merge(cfg, layer)
    for item in overrides or []:
        apply_override(cfg, item)
    return cfg


def apply_override(cfg: dict, item: str) -> None:
    """Set ``a.b.c=value`` in place; the value is parsed as YAML (numbers, lists, booleans)."""
    if "=" not in item:
        raise InputError(None, f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise InputError(None, f"override {item!r} has an empty key")
    node = cfg
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = yaml.safe_load(raw)
