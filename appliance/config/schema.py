"""Reading a parsed TOML document into the config dataclasses with pydantic, and naming what is wrong.

The dataclasses are the schema: their fields give the keys a table allows (a field's `file_key(...)` alias
where the file spells it differently), their defaults and their types. pydantic validates a whole file
in one pass; the first error becomes a `ConfigError` naming the table and key, e.g.
`[model] publish_every must be at least 1` or `unknown key "x" in [event]; known keys: ...`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from appliance.errors import ConfigError

T = TypeVar("T")


@cache
def _adapter(cls: type[T]) -> TypeAdapter[T]:
    return TypeAdapter(cls)


def parse_document(cls: type[T], data: Mapping[str, Any], *, context: Mapping[str, Any] | None = None,
                   extra_keys: Mapping[str, tuple[str, ...]] | None = None) -> T:
    """Validate `data` as a `cls`; raise `ConfigError` naming the first wrong key.

    `extra_keys` are keys a table accepts that its dataclass has no field for (read before validation),
    listed among the known keys when an unknown one is refused.
    """
    try:
        return _adapter(cls).validate_python(data, context=dict(context or {}))
    except ValidationError as exc:
        # A misspelt key is also a missing one: name the misspelling first.
        errors = sorted(exc.errors(), key=lambda error: error["type"] != "unexpected_keyword_argument")
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(describe(errors[0], cls, extra_keys or {}) + more) from None


def dump_document(cls: type[T], value: T) -> dict[str, Any]:
    """Return `value` as TOML-ready tables: keys as the file spells them, no None (TOML has no null)."""
    return _without_none(_adapter(cls).dump_python(value, mode="json", by_alias=True))


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {name: _without_none(item) for name, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_none(item) for item in value]
    return value


def describe(error: ErrorDetails, root: type, extra_keys: Mapping[str, tuple[str, ...]]) -> str:
    """Return the one-line message for a pydantic error over the document `root`."""
    section, key = where(error["loc"])
    place = f"[{section}]" if section else "[top level]"
    kind = error["type"]
    if kind == "unexpected_keyword_argument":
        names = table_keys(table_at(root, error["loc"][:-1])) + extra_keys.get(section, ())
        return f'unknown key "{key}" in {place}; known keys: {", ".join(sorted(names))}'
    if kind == "missing":
        return f'{place} needs "{key}"'
    if kind in ("dataclass_type", "dict_type"):
        name = f"{section}.{key}" if section else key
        return f'"{name}" must be a table ([{name}])'
    if kind == "value_error":
        return f"{place} {key} {error['ctx']['error']}"
    return f"{place} {key}: {error['msg'].lower()}, got {error['input']!r}"


def where(loc: tuple[int | str, ...]) -> tuple[str, str]:
    """Split an error's location into its table and key: ("features.aggregate[0]", "op")."""
    parts = [str(part) if isinstance(part, str) else f"[{part}]" for part in loc]
    last = max((i for i, part in enumerate(loc) if isinstance(part, str)), default=0)
    key = "".join(parts[last:])
    section = ".".join(parts[:last]).replace(".[", "[")
    return section, key


def table_keys(cls: type) -> tuple[str, ...]:
    """Return the keys a table read as the dataclass `cls` allows, as the file spells them."""
    return tuple(name for name, _ in _fields(cls))


def table_at(root: type, loc: tuple[int | str, ...]) -> type:
    """Return the dataclass read at `loc` below `root` (array indices step into the array's items)."""
    cls = root
    for part in loc:
        if isinstance(part, str):
            cls = _table_type(dict(_fields(cls))[part])
    return cls


def document_keys(root: type, prefix: str = "") -> Iterator[str]:
    """Yield every key of the document `root` as a dotted path: "model.publish_every", "features.aggregate.op"."""
    for name, hint in _fields(root):
        path = f"{prefix}{name}"
        nested = _table_type(hint)
        if dataclasses.is_dataclass(nested):
            yield from document_keys(nested, path + ".")
        else:
            yield path


def document_tables(root: type, prefix: str = "") -> Iterator[tuple[str, type, bool]]:
    """Yield every table below `root`: its dotted name, its dataclass, and whether it is an array of tables."""
    for name, hint in _fields(root):
        nested = _table_type(hint)
        if dataclasses.is_dataclass(nested):
            path = f"{prefix}{name}"
            yield path, nested, typing.get_origin(_unannotated(hint)) is tuple
            yield from document_tables(nested, path + ".")


def _unannotated(hint: Any) -> Any:
    while typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def _fields(cls: type) -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        alias = next((m.alias for m in getattr(hint, "__metadata__", ()) if isinstance(m, FieldInfo) and m.alias),
                     None)
        out.append((alias or field.name, hint))
    return out


def _table_type(hint: Any) -> Any:
    """Return the dataclass a field holds (itself, or as an array's item), else the hint unchanged."""
    hint = _unannotated(hint)
    if typing.get_origin(hint) is tuple or typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(hint) if dataclasses.is_dataclass(arg)]
        return inner[0] if inner else hint
    return hint
