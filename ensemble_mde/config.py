"""YAML configs: packaged defaults < preset < `--config FILE` < `--set a.b=value`.

The packaged layers (files under `configs/`, shipped inside the package) define the
schema: a user file or override may only set keys that exist there, with a value of
the same type. An unknown key names the closest valid one.
"""

from __future__ import annotations

import copy
import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from ensemble_mde.errors import ConfigError

PRESETS_KEY = "presets"
# Keys whose packaged default is a bool that also take a file path (weights: true = timm's
# ImageNet weights, false = random init, a path = a local file).
BOOL_OR_PATH_KEYS = ("model.pretrained", "meta.pretrained")


def packaged_config_path(name: str) -> Path:
    """Path of a packaged config, e.g. 'defaults' or 'base/adabins' (no .yaml)."""
    root = resources.files("ensemble_mde.configs")
    path = Path(str(root.joinpath(*f"{name}.yaml".split("/"))))
    if not path.is_file():
        available = sorted(str(p.relative_to(Path(str(root))))[:-5] for p in Path(str(root)).rglob("*.yaml"))
        close = difflib.get_close_matches(name, available, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"no packaged config {name!r}{hint}", name)
    return path


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"not valid YAML{where}", path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("a config file must hold a mapping of keys", path)
    return data


def _flat_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in tree.items():
        keys.append(prefix + k)
        if isinstance(v, dict):
            keys.extend(_flat_keys(v, prefix + k + "."))
    return keys


def _closest(key: str, schema_root: dict, siblings: Iterable[str]) -> str:
    leaf = key.rsplit(".", 1)[-1]
    near = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.5)
    if near:
        parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
        return f"; closest valid key: {parent + near[0]!r}"
    near = difflib.get_close_matches(key, _flat_keys(schema_root), n=1, cutoff=0.5)
    if not near:  # the user may have put a key in the wrong section
        near = [k for k in _flat_keys(schema_root) if k.rsplit(".", 1)[-1] == leaf][:1]
    return f"; closest valid key: {near[0]!r}" if near else ""


def _float_or_same(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _coerce(value: Any, default: Any, key: str, source: str) -> Any:
    """Check `value` against the type of the packaged `default` (None and "auto" accept anything)."""
    if default is None or value is None or default == "auto":
        return value
    if key in BOOL_OR_PATH_KEYS and isinstance(value, str):
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        # A float default written as an int in YAML (e.g. 1) stays an int field.
    elif isinstance(default, float):
        value = _float_or_same(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(
            f"{source}: key {key!r} expects {type(default).__name__}, got {type(value).__name__} {value!r}", key
        )
    return value


def merge(base: dict, update: dict, *, strict: bool, source: str, _root: dict | None = None, _prefix: str = "") -> dict:
    """Deep-merge `update` into a copy of `base`. With strict=True every key of `update`
    must exist in `base` and keep its type."""
    root = base if _root is None else _root
    out = copy.deepcopy(base)
    for k, v in update.items():
        key = _prefix + str(k)
        if strict and k not in base:
            raise ConfigError(f"{source}: unknown key {key!r}{_closest(key, root, base.keys())}", key)
        if isinstance(base.get(k), dict) and base.get(k) and isinstance(v, dict):
            out[k] = merge(base[k], v, strict=strict, source=source, _root=root, _prefix=key + ".")
        elif strict:
            if isinstance(base.get(k), dict) and base.get(k) and not isinstance(v, dict):
                raise ConfigError(f"{source}: key {key!r} is a section, not a value", key)
            out[k] = _coerce(v, base.get(k), key, source)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(text: str) -> dict:
    """'a.b=value' -> {'a': {'b': value}}, the value parsed as a YAML scalar/list."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value", text)
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key", text)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and value.strip().lower() not in ("nan", "inf", "-inf", "infinity"):
        value = _float_or_same(value)
    tree: dict = {}
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def load_config(
    packaged: Sequence[str],
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    preset: str | None = None,
) -> dict:
    """Resolve a run config.

    packaged: packaged layers in order, e.g. ["defaults", "base/adabins"]; they define the
    schema. preset: a name under a layer's `presets:` mapping (e.g. "cpu"), applied after
    the packaged layers. Then the user's file, then each `a.b=value` override.
    """
    cfg: dict = {}
    presets: dict = {}
    for name in packaged:
        layer = read_yaml(packaged_config_path(name))
        presets.update(layer.pop(PRESETS_KEY, {}) or {})
        cfg = merge(cfg, layer, strict=False, source=name)
    if preset:
        if preset not in presets:
            close = difflib.get_close_matches(preset, list(presets), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; available: {', '.join(sorted(presets)) or 'none'}"
            raise ConfigError(f"unknown preset {preset!r}{hint}", preset)
        cfg = merge(cfg, presets[preset], strict=True, source=f"preset {preset}")
    if config_file is not None:
        user = read_yaml(config_file)
        user.pop(PRESETS_KEY, None)
        cfg = merge(cfg, user, strict=True, source=str(config_file))
    for text in overrides:
        cfg = merge(cfg, parse_override(text), strict=True, source=f"--set {text}")
    return cfg


def upgrade_saved(cfg: dict) -> dict:
    """A run config saved by an earlier version, in today's keys (in place; returned):
    `pretrained_path` (a local file or null) became `pretrained`; `augment.color_range`
    (one range for brightness, contrast and channel factors) became one range each, with
    no gamma."""
    for section in ("model", "meta"):
        part = cfg.get(section)
        if isinstance(part, dict) and "pretrained_path" in part:
            part["pretrained"] = part.pop("pretrained_path") or False
    augment = cfg.get("augment")
    if isinstance(augment, dict) and "color_range" in augment:
        span = list(augment.pop("color_range"))
        augment.update(gamma=[1.0, 1.0], brightness=span, contrast=span, channel=span)
    return cfg


def get(cfg: dict, dotted: str) -> Any:
    """cfg['a']['b'] for 'a.b'; a ConfigError naming the key if absent."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"missing config key {dotted!r}", dotted)
        node = node[part]
    return node


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
