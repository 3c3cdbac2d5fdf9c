"""Map YAML/JSON documents and `--set section.field=value` overrides onto nested frozen dataclasses.

Errors name the full dotted field ("algorithm.beta: must be in [0, 1], got 1.5"), unknown keys are
refused (a typo must not silently fall back to a default), and values are parsed by the field's type. The
fields a root class lists in NOT_SETTINGS (derived or fixed) are refused with the reason, and left out by to_dict.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bond.config import ConfigError

T = TypeVar("T")


def load_document(path: Path) -> dict[str, Any]:
    """A YAML or JSON file as a dict (an empty file is an empty dict)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: no such file {path}")
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        text = path.read_bytes().decode("utf-8")
        data = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except UnicodeDecodeError:
        raise ConfigError(f"config: {path} is not a text file (not UTF-8)") from None
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e.strerror or e}") from None
    except (ValueError, RecursionError, yaml.YAMLError) as e:  # JSONDecodeError is a ValueError
        raise ConfigError(f"config: {path} is not valid {kind}: {_one_line(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one 'a.b.c=value' override in place; the value is parsed as YAML (numbers, lists, true/false)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected section.field=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: {part} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except (RecursionError, yaml.YAMLError) as e:
        raise ConfigError(f"--set {assignment!r}: the value is not valid YAML: {_one_line(e)}") from None


def _one_line(error: BaseException) -> str:
    """A parser's multi-line message (YAML marks the place under the line) as one line: the CLI prints one."""
    return " ".join(str(error).split())


def _parse(kind: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        if isinstance(value, kind):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a section (mapping), got {value!r}")
        return build(kind, value, prefix=f"{name}.")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(kind)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse(inner, value, name)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(kind)
        return tuple(_parse(inner, v, f"{name}[{i}]") for i, v in enumerate(value))
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        try:
            return kind(value)
        except ValueError:
            raise ConfigError(f"{name}: expected one of {[m.value for m in kind]}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a path, got {value!r}")
        return Path(value)
    return value  # the dataclass's own validation checks the type and range


def build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Construct dataclass `cls` from a mapping, recursing into nested dataclass fields."""
    for dotted, reason in getattr(cls, "NOT_SETTINGS", {}).items():
        *sections, name = dotted.split(".")
        parent = functools.reduce(lambda node, key: node.get(key) if isinstance(node, dict) else None, sections, data)
        if isinstance(parent, dict) and name in parent:
            raise ConfigError(f"{prefix}{dotted}: not a setting: {reason}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(data) - set(fields)))
    if unknown:
        key = unknown[0] if unknown[0].isidentifier() else repr(unknown[0])  # a key of '\n' stays on the line
        raise ConfigError(f"{prefix}{key}: unknown field (known: {', '.join(sorted(fields))})")
    kwargs = {name: _parse(hints[name], value, prefix + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None
    except TypeError as e:  # e.g. a missing required field
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None


def to_dict(obj: Any, drop: Collection[str] = (), prefix: str = "") -> Any:
    """A config as plain YAML-able data (enums as values, paths as strings), without the root's NOT_SETTINGS."""
    if dataclasses.is_dataclass(obj):
        drop = drop or getattr(obj, "NOT_SETTINGS", ())
        fields = [f.name for f in dataclasses.fields(obj) if prefix + f.name not in drop]
        return {name: to_dict(getattr(obj, name), drop, f"{prefix}{name}.") for name in fields}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple | list):
        return [to_dict(v, drop, prefix) for v in obj]
    return obj
