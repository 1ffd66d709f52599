"""YAML configs: packaged defaults < preset < `--config FILE` < `--set a.b=value` < settings.

The packaged layers (files under `configs/`, shipped inside the package) define the
schema: a user file or override may only set keys that exist there, with a value of
the same type. An unknown key names the closest valid one. Only `--set` text is parsed as
YAML; a `Setting` (a command-line flag such as --out or --data) is a value of its own type,
so a path stays the string it is (`runs/0123`, `/data/nyu #2`).
"""

from __future__ import annotations

import copy
import difflib
import functools
import math
import reprlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from ensemble_mde.errors import ConfigError

PRESETS_KEY = "presets"
# data keys that say where a list-file dataset's lists and files are (bts, kitti)
LISTING_KEYS = ("train_list", "test_list", "train_root", "test_root", "train_depth_root", "test_depth_root")
RULES = "rules"  # configs/rules.yaml: what each packaged key accepts beyond its type
TYPES = {"int": int, "float": float, "bool": bool, "str": str, "list": list,
         "weights": (bool, str)}  # weights: true (timm's ImageNet weights), false (random) or a file path


@dataclass(frozen=True)
class Setting:
    """One typed value for a config key, e.g. Setting("run.name", "0123", "--out"): merged as
    the last layer and checked like any other; `source` names it in errors."""

    key: str
    value: Any
    source: str


def parse_size(text: str) -> tuple[int, int]:
    """'240x320' -> (240, 320): height x width in pixels."""
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ConfigError(f"size {text!r} must look like HxW, e.g. 240x320", "size") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"size {text!r} must be positive", "size")
    return h, w


def nest(dotted: str, value: Any) -> dict:
    """'a.b', v -> {'a': {'b': v}}."""
    tree: dict = {}
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


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


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one YAML mapping (PyYAML would keep the last one silently)."""


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (merge keys `<<` aside)."""

    def construct_mapping(self, node, deep=False):
        first_line: dict = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in first_line:
                    lines = f" (lines {first_line[key]} and {line})" if first_line[key] != line else ""
                    raise _DuplicateKey(None, None, f"key {key!r} given twice{lines}; keep one", key_node.start_mark)
                first_line[key] = line
        return super().construct_mapping(node, deep)


def _looping_key(node: Any, key: str = "", _open: dict | None = None, _done: set | None = None) -> str | None:
    """The dotted key (list items as [i]) of the first value of `node` that contains itself (a
    YAML alias inside the anchor it names: `name: &a [*a]`), or None. A value shared by several
    keys is walked once."""
    _open, _done = {} if _open is None else _open, set() if _done is None else _done
    if not isinstance(node, (dict, list)) or id(node) in _done:
        return None
    if id(node) in _open:
        return _open[id(node)] or "the top level"
    _open[id(node)] = key
    children = (((f"{key}.{k}" if key else str(k)), v) for k, v in node.items()) if isinstance(node, dict) \
        else ((f"{key}[{i}]", v) for i, v in enumerate(node))
    for child_key, child in children:
        found = _looping_key(child, child_key, _open, _done)
        if found:
            return found
    del _open[id(node)]
    _done.add(id(node))
    return None


def _load_yaml_text(text: str, source: object, key: str = "") -> Any:
    """YAML text (the value of dotted `key`, "" for a whole file) -> value, as yaml.safe_load
    reads it, less what no config can be: a key given twice in a mapping, a value that contains
    itself, nesting too deep to read. ConfigError naming `source`."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)
        loop = _looping_key(data, key)
    except _DuplicateKey as e:
        raise ConfigError(e.problem, source) from None
    except RecursionError:
        raise ConfigError("nested too deeply to be a config", source) from None
    if loop:
        raise ConfigError(f"{loop} contains itself through a YAML alias (&anchor ... *anchor); write the value out",
                          source)
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", path)
    try:
        data = _load_yaml_text(path.read_text(encoding="utf-8-sig"), path)
    except UnicodeDecodeError:
        raise ConfigError("not a text file (a YAML config must be UTF-8 text)", path) from None
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


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxstring, _SHOWN.maxother = 2, 6, 6, 200, 200


def shown(value: Any) -> str:
    """repr(value) for an error line, cut short: a YAML file's aliases can make a small file
    hold a list of billions of elements, whose full repr would be the error 'line'."""
    return _SHOWN.repr(value)


def _coerce(value: Any, default: Any, key: str, source: str) -> Any:
    """Check `value` against the type of the packaged `default` (None and "auto" accept anything)."""
    if default is None or value is None or default == "auto":
        return value
    rule = rule_for(key)
    if rule.get("type") == "weights":  # a bool default that also takes a file path
        if isinstance(value, (bool, str)):
            return value
        raise ConfigError(f"{source}: {key} must be {describe_rule(rule)}, got {shown(value)}", key)
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
            f"{source}: key {key!r} expects {type(default).__name__}, got {type(value).__name__} {shown(value)}", key
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


def _part_with_keys_of(layer: dict, cfg: dict) -> dict:
    """The part of `layer` whose (nested) keys `cfg` has."""
    return {k: _part_with_keys_of(v, cfg[k]) if isinstance(v, dict) and isinstance(cfg[k], dict) else v
            for k, v in layer.items() if k in cfg}


def parse_override(text: str) -> dict:
    """'a.b=value' -> {'a': {'b': value}}, the value parsed as a YAML scalar/list."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value", text)
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key", text)
    try:
        value = _load_yaml_text(raw, f"--set {text}", key) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and value.strip().lower() not in ("nan", "inf", "-inf", "infinity"):
        value = _float_or_same(value)
    return nest(key, value)


@functools.lru_cache(maxsize=1)
def packaged_rules() -> dict:
    """configs/rules.yaml: what each packaged key accepts (see the file's header)."""
    return read_yaml(packaged_config_path(RULES))


def rule_for(dotted: str) -> dict:
    """The packaged rule of key 'a.b' ({} when it has none)."""
    node: Any = packaged_rules()
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) and _is_rule(node) else {}


def _is_rule(node: dict) -> bool:
    """A rule is a mapping of rule words; a section maps key names to rules."""
    return not any(isinstance(v, dict) for v in node.values())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def describe_rule(rule: dict, default: Any = None) -> str:
    """What a rule (and the type of the key's packaged `default`) accepts, in words, e.g.
    "an int >= 1", "a number in [0, 1]", "one of none, bf16", "a list of 2 ints >= 1 or null"."""
    kind = rule.get("type") or {bool: "bool", int: "int", float: "float", str: "str", list: "list"}.get(
        type(default))
    lo = (f">= {_number(rule['min'])}", rule["min"], "[") if "min" in rule else \
        (f"> {_number(rule['above'])}", rule["above"], "(") if "above" in rule else None
    hi = (f"<= {_number(rule['max'])}", rule["max"], "]") if "max" in rule else \
        (f"< {_number(rule['below'])}", rule["below"], ")") if "below" in rule else None
    bounds = (f" in {lo[2]}{_number(lo[1])}, {_number(hi[1])}{hi[2]}" if lo and hi
              else f" {(lo or hi)[0]}" if lo or hi else "")
    choices = ", ".join(str(c) for c in rule.get("choices", ()))
    if choices and kind == "list":
        text = f"a list drawn from {choices}"
    elif choices:
        text = f"one of {choices}"
    elif kind == "list":
        element = {"int": "int", "float": "number", "str": "string"}.get(rule.get("of"), "number")
        count = f"{rule['length']} " if "length" in rule else ""
        text = f"a list of {count}{element}s{bounds}" + (" in ascending order" if rule.get("ascending") else "")
    elif kind == "bool":
        text = "true or false"
    elif kind == "weights":
        text = "true (timm's ImageNet weights), false (random init) or a weights file path"
    elif kind == "str":
        text = "a string"
    else:
        text = _article("int" if kind == "int" else "number" if bounds else "finite number") + bounds
    return text + (" or auto" if rule.get("auto") else "") + (" or null" if rule.get("nullable") else "")


def _number(x: float) -> str:
    """A rule's bound in words: an int in full (4294967295), a float short (0.001)."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def _is_of(x: Any, kind: type) -> bool:
    """Whether a list element is of a rule's `of` type (an int counts as a float)."""
    return _is_number(x) and (kind is float or isinstance(x, int)) if kind in (int, float) else isinstance(x, kind)


def _fits(value: Any, rule: dict, default: Any, sibling: Any) -> bool:
    """Whether `value` satisfies `rule` (`sibling`: the value of rule["less_than"]'s key)."""
    if value is None:
        return bool(rule.get("nullable"))
    if rule.get("auto") and value == "auto":
        return True
    kind = TYPES.get(rule.get("type")) or (type(default) if default is not None and default != "auto" else None)
    if kind is float:
        if not _is_number(value):
            return False
    elif kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            return False
    elif kind is not None and not isinstance(value, kind):
        return False
    items = value if isinstance(value, list) else [value]
    if "choices" in rule:  # of a list: of each element
        return all(x in rule["choices"] for x in items) if kind is list else value in rule["choices"]
    numbers = [x for x in items if _is_number(x)]
    if isinstance(value, list):
        if "length" in rule and len(value) != rule["length"]:
            return False
        element = TYPES.get(rule.get("of"))
        if element is not None and not all(_is_of(x, element) for x in items):
            return False
        if rule.get("ascending") and (len(numbers) != len(items) or items != sorted(items)):
            return False
    if not all(math.isfinite(x) for x in numbers):
        return False
    bounded = any(word in rule for word in ("min", "max", "above", "below", "less_than"))
    if bounded and len(numbers) != len(items):
        return False
    return all(("min" not in rule or x >= rule["min"]) and ("max" not in rule or x <= rule["max"])
               and ("above" not in rule or x > rule["above"]) and ("below" not in rule or x < rule["below"])
               and (not _is_number(sibling) or x < sibling) for x in numbers)


def check_values(cfg: dict, *, rules: dict | None = None, defaults: dict | None = None,
                 origins: dict[str, str] | None = None, prefix: str = "", only: set[str] | None = None) -> None:
    """Check every key of `cfg` that has a rule (default: the packaged rules) against it;
    `defaults` (same shape) gives each key's packaged type, `origins` {dotted key: layer
    that set it} names the layer in the error, `prefix` goes before every key named. `only`:
    check just these dotted keys, each on its own (less_than, which relates two keys, waits
    for the whole config). Raises ConfigError naming the first bad key."""
    rules = packaged_rules() if rules is None else rules
    defaults = cfg if defaults is None else defaults
    for name, rule in rules.items():
        if not isinstance(cfg, dict) or name not in cfg:
            continue
        key, value = prefix + name, cfg[name]
        default = defaults.get(name) if isinstance(defaults, dict) else None
        if not _is_rule(rule):
            check_values(value, rules=rule, defaults=default, origins=origins, prefix=key + ".", only=only)
            continue
        if only is not None and key not in only:
            continue
        sibling = cfg.get(rule["less_than"]) if rule.get("less_than") and only is None else None
        if not _fits(value, rule, default, sibling):
            where = (origins or {}).get(key)
            limit = f" below {prefix + rule['less_than']} ({sibling!r})" if rule.get("less_than") else ""
            raise ConfigError(f"{where + ': ' if where else ''}{key} must be {describe_rule(rule, default)}"
                              f"{limit}, got {shown(value)}", key)


def load_config(
    packaged: Sequence[str],
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    preset: str | None = None,
    settings: Sequence[Setting] = (),
    unused_sections: Sequence[str] = (),
    protocol: str | None = None,
) -> dict:
    """Resolve a run config.

    packaged: packaged layers in order, e.g. ["defaults", "base/adabins"]; they define the
    schema. preset: a name under a layer's `presets:` mapping (e.g. "cpu"), applied after
    the packaged layers. Then the user's file, then each `a.b=value` override, then each
    typed setting. A setting and an override of the same key is an error (neither wins).
    unused_sections: top-level sections of the user's file that the caller builds nothing
    from (`data check` reads a learner's file but builds no model): dropped, not refused.
    protocol: a packaged layer after `packaged` that sets only the keys they have
    ("data/kitti": its model.max_depth reaches a learner's config, not a meta run's).
    """
    cfg: dict = {}
    presets: dict = {}
    for name in packaged:
        layer = read_yaml(packaged_config_path(name))
        presets.update(layer.pop(PRESETS_KEY, {}) or {})
        cfg = merge(cfg, layer, strict=False, source=name)
    if protocol is not None:
        layer = read_yaml(packaged_config_path(protocol))
        cfg = merge(cfg, _part_with_keys_of(layer, cfg), strict=True, source=protocol)
    defaults = copy.deepcopy(cfg)
    layers: list[tuple[str, dict]] = []
    if preset:
        if preset not in presets:
            close = difflib.get_close_matches(preset, list(presets), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; available: {', '.join(sorted(presets)) or 'none'}"
            raise ConfigError(f"unknown preset {preset!r}{hint}", preset)
        layers.append((f"preset {preset}", presets[preset]))
    if config_file is not None:
        user = read_yaml(config_file)
        for section in (PRESETS_KEY, *unused_sections):
            user.pop(section, None)
        layers.append((str(config_file), user))
    parsed = [(f"--set {text}", parse_override(text)) for text in overrides]
    overridden = {key: source for source, tree in parsed for key in _flat_keys(tree)}
    for setting in settings:
        if setting.key in overridden:
            raise ConfigError(f"{setting.source} and {overridden[setting.key]} both set {setting.key}; give one "
                              "of them", setting.key)
    layers += parsed + [(setting.source, nest(setting.key, setting.value)) for setting in settings]
    origins: dict[str, str] = {}
    for source, layer in layers:  # each layer checked as it comes: a later one is type-checked against it
        cfg = merge(cfg, layer, strict=True, source=source)
        keys = set(_flat_keys(layer))
        origins.update((key, source) for key in keys)
        check_values(cfg, defaults=defaults, origins=origins, only=keys)
    check_values(cfg, defaults=defaults, origins=origins)
    return cfg


def drop_key(tree: dict, dotted: str) -> None:
    """Remove tree['a']['b'] for 'a.b', in place (nothing when absent)."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.get(part) if isinstance(tree, dict) else None
        if tree is None:
            return
    if isinstance(tree, dict):
        tree.pop(leaf, None)


def upgrade_saved(cfg: dict) -> dict:
    """A run config saved by an earlier version, in today's keys (in place; returned):
    `pretrained_path` (a local file or null) became `pretrained`; `augment.color_range`
    (one range for brightness, contrast and channel factors) became one range each, with
    no gamma; what training derived went from the config's keys into its record
    (`run.input_size` -> input_size, a meta run's `ensemble.resolved` -> bases and its data
    section -> data)."""
    record = cfg.setdefault("record", {})
    run = cfg.get("run")
    if isinstance(run, dict) and "input_size" in run:
        size = run.pop("input_size")
        if size:
            record.setdefault("input_size", size)
    ensemble = cfg.get("ensemble")
    if isinstance(ensemble, dict) and "resolved" in ensemble:
        record.setdefault("bases", ensemble.pop("resolved"))
        record.setdefault("data", copy.deepcopy(cfg.get("data")))
    for section in ("model", "meta"):
        part = cfg.get(section)
        if isinstance(part, dict) and "pretrained_path" in part:
            part["pretrained"] = part.pop("pretrained_path") or False
    augment = cfg.get("augment")
    if isinstance(augment, dict) and "color_range" in augment:
        span = list(augment.pop("color_range"))
        augment.update(gamma=[1.0, 1.0], brightness=span, contrast=span, channel=span)
    return cfg


def absolute_paths(cfg: dict) -> dict:
    """Make data and weight paths absolute, so a run folder works from any directory; a
    weights file named in the config (model./meta.pretrained) must exist. In place; returned."""
    if cfg["data"]["path"] is None:  # e.g. an imported run, which was trained on no data of ours
        raise ConfigError("no dataset is set (data.path is null); pass --data PATH", "data.path")
    cfg["data"]["path"] = str(Path(cfg["data"]["path"]).expanduser().resolve())
    for key in LISTING_KEYS:
        if cfg["data"].get(key):
            cfg["data"][key] = str(Path(cfg["data"][key]).expanduser().resolve())
    for section in ("model", "meta"):
        weights = (cfg.get(section) or {}).get("pretrained")
        if isinstance(weights, str):
            path = Path(weights).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"pretrained weights file not found ({section}.pretrained)", path)
            cfg[section]["pretrained"] = str(path)
    return cfg


def get(cfg: dict, dotted: str) -> Any:
    """cfg['a']['b'] for 'a.b'; a ConfigError naming the key if absent."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"missing config key {dotted!r}", dotted)
        node = node[part]
    return node


class _PlainDumper(yaml.SafeDumper):
    """Writes a value used twice in full both times, never as an `&id001` anchor and alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(cfg: dict) -> str:
    return yaml.dump(cfg, Dumper=_PlainDumper, sort_keys=False, default_flow_style=None)
