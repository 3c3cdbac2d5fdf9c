"""`--help` text for every config field, generated from the config dataclasses themselves.

The docs are the string literals written under each field (the house style documents fields that way), read
from the class source with `ast`; an enum-typed field also lists its values with the comment beside each.
Defaults come from a default-constructed JobConfig, so a section's own default (e.g. the tiny reward model)
shows, not only the class's.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import io
import textwrap
import tokenize
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any

from cluster.config import loading


@dataclasses.dataclass(frozen=True)
class FieldHelp:
    name: str  # dotted, e.g. "algorithm.beta"
    type: str  # e.g. "float", "{sync,pipelined}", "int | None"
    default: str  # as it would be written in YAML
    doc: str  # the field's docstring ('' if it has none)


@cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: the string literal that follows its annotated assignment in the class body}."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    (node,) = ast.parse(source).body
    docs, body = {}, node.body
    for stmt, after in zip(body, body[1:] + [None], strict=True):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


@cache
def enum_comments(cls: type[enum.Enum]) -> dict[str, str]:
    """{member value: the `# comment` on its line} for an enum class written one member per line."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments, pending = {}, None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.string in cls.__members__ and tok.start[1] > 0:
            pending = cls.__members__[tok.string].value
        elif tok.type == tokenize.COMMENT and pending is not None:
            comments[str(pending)] = tok.string.lstrip("# ").strip()
        elif tok.type == tokenize.NEWLINE:
            pending = None
    return comments


def type_name(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(kind))
    if origin is tuple:
        return f"list of {type_name(typing.get_args(kind)[0])}"
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "{" + ",".join(str(m.value) for m in kind) + "}"
    if kind is type(None):
        return "None"
    if kind is Path:
        return "path"
    return getattr(kind, "__name__", str(kind))


def _dataclass_in(kind: Any) -> type | None:
    """The dataclass a field holds (directly or as `X | None`), else None."""
    if dataclasses.is_dataclass(kind):
        return kind
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(kind) if dataclasses.is_dataclass(a)]
        return inner[0] if inner else None
    return None


def describe_fields(cls: type, instance: Any, prefix: str = "") -> list[FieldHelp]:
    """Every leaf field of dataclass `cls`, recursing into nested sections (an unset optional section is
    described with its class defaults)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind, name = hints[f.name], prefix + f.name
        value = getattr(instance, f.name) if instance is not None else _class_default(f)
        nested = _dataclass_in(kind)
        if nested is not None:
            if value is None:  # an optional section: say so, then describe what setting it takes
                out.append(FieldHelp(name, "section | None", "null", docs.get(f.name, "")))
                value = _try_default(nested)
            out += describe_fields(nested, value, prefix=name + ".")
            continue
        doc = docs.get(f.name, "")
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            notes = enum_comments(kind)
            choices = "; ".join(f"{m.value}: {notes[str(m.value)]}" for m in kind if str(m.value) in notes)
            doc = f"{doc} ({choices})" if doc and choices else doc or choices
        default = "(required)" if value is dataclasses.MISSING else _yaml_value(loading.to_dict(value))
        out.append(FieldHelp(name, type_name(kind), default, doc))
    return out


def _class_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _try_default(cls: type) -> Any:
    try:
        return cls()
    except Exception:  # noqa: BLE001 - a section with required fields has no default instance
        return None


def _yaml_value(value: Any) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def render(cls: type, instance: Any, width: int = 100) -> str:
    """The help text: one block per section, one entry per field (name, type, default, doc)."""
    lines, section = ["config fields (YAML `section: {field: value}` or --set section.field=value):"], None
    fixed = getattr(cls, "NOT_SETTINGS", {})
    for h in describe_fields(cls, instance):
        doc = f"(not a setting) {fixed[h.name]}" if h.name in fixed else h.doc  # derived or fixed: say why
        top = h.name.split(".")[0]
        if top != section:
            section = top
            lines.append(f"\n  {top}:")
        lines.append(f"    {h.name}: {h.type} = {h.default}")
        if doc:
            lines += textwrap.wrap(doc, width=width, initial_indent=" " * 8, subsequent_indent=" " * 8)
    return "\n".join(lines)
