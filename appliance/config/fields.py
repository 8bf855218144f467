"""What each `appliance.toml` key accepts: pydantic-annotated value types for the config dataclasses.

A dataclass field written `publish_every: AtLeastOne = 50` carries its default (50, read by the rest of
the code as a plain dataclass default) and what the file may say (a whole number >= 1) in one place.
A check's `ValueError` text continues the key's name ("[model] publish_every must be at least 1"); a
wrong type is a ValueError too (TRY004 aside), because pydantic reports only those with the key's path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    ValidationInfo,
    with_config,
)

from appliance.errors import ConfigError
from appliance.timeutil import parse_duration

T = TypeVar("T")

table = with_config(ConfigDict(extra="forbid"))  # a TOML table: a key its dataclass lacks is refused


def file_key(name: str) -> Any:
    """Return the field's metadata naming its key in the file, when the attribute's name differs."""
    return Field(alias=name)


Text = Annotated[str, Strict()]
Whole = Annotated[int, Strict()]
Number = Annotated[float, Strict()]  # strict still takes a TOML integer: 1 is 1.0


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")  # noqa: TRY004
    return value


Flag = Annotated[bool, BeforeValidator(_flag)]
NonEmptyText = Annotated[str, Strict(), Field(min_length=1)]


def _check(test: Callable[[Any], bool], message: str) -> AfterValidator:
    def check(value: Any) -> Any:
        if not test(value):
            raise ValueError(message)
        return value

    return AfterValidator(check)


def between(low: int, high: int) -> AfterValidator:
    return _check(lambda value: low <= value <= high, f"must be between {low} and {high}")


def choice(values: Sequence[str]) -> AfterValidator:
    """Accept one of `values`, refusing anything else by name."""

    def check(value: str) -> str:
        if value not in values:
            raise ValueError(f"must be one of {', '.join(values)}, not {value!r}")
        return value

    return AfterValidator(check)


AtLeastOne = Annotated[int, Strict(), _check(lambda value: value >= 1, "must be at least 1")]
PositiveWhole = Annotated[int, Strict(), _check(lambda value: value >= 1, "must be a positive whole number")]
CountFromZero = Annotated[int, Strict(), _check(lambda value: value >= 0, "must be a positive whole number")]
NonNegative = Annotated[float, Strict(), _check(lambda value: value >= 0, "must be a number >= 0")]


def _duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except ConfigError as exc:  # 'duration "soon" is not understood; ...'
        raise ValueError(f"is not a duration: {exc}") from None


def _optional_duration(value: Any) -> float | None:
    return _duration(value) if value else None


Duration = Annotated[float, BeforeValidator(_duration)]
OptionalDuration = Annotated[float | None, BeforeValidator(_optional_duration)]  # absent, "" or 0: none
PositiveDuration = Annotated[float, BeforeValidator(_duration),
                             _check(lambda value: value > 0, 'must be a positive duration such as "7d"')]


def _kept(value: Any) -> float | None:
    if value == "forever":
        return None
    if _duration(value) <= 0:
        raise ValueError('must be a positive duration such as "30d", or "forever"')
    return _duration(value)


_BYTE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20,
               "gib": 1 << 30, "tib": 1 << 40}
MIN_STORE_BYTES = 1 << 20  # a byte bound below this could not hold a checkpoint


def _size(value: Any) -> int | None:
    """A size: a whole number of bytes or a text such as "20 GB" / "512MiB"; "auto" (or absent): None."""
    if value is None or value == "auto":
        return None
    if isinstance(value, bool):
        raise ValueError('must be a size such as "20 GB", or "auto"')  # noqa: TRY004
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        try:
            return int(float(number) * _BYTE_UNITS[text[len(number):] or "b"])
        except (ValueError, KeyError):
            raise ValueError(f'must be a size such as "20 GB" or "512 MiB", or "auto", not {value!r}') from None
    raise ValueError('must be a size such as "20 GB", or "auto"')


def _byte_size(value: Any) -> int | None:
    size = _size(value)
    if size is not None and size < MIN_STORE_BYTES:
        raise ValueError(f"must be at least 1 MiB ({MIN_STORE_BYTES:,} bytes), not {size:,}")
    return size


def _reserve_size(value: Any) -> int | None:
    size = _size(value)
    if size is not None and size < 0:
        raise ValueError(f"must be a size >= 0, not {size:,}")
    return size


ByteSize = Annotated[int | None, BeforeValidator(_byte_size),
                     PlainSerializer(lambda value: "auto" if value is None else value)]
ReserveSize = Annotated[int | None, BeforeValidator(_reserve_size),  # 0 turns the disk stage off
                        PlainSerializer(lambda value: "auto" if value is None else value)]


Kept = Annotated[float | None, BeforeValidator(_kept),
                 PlainSerializer(lambda value: "forever" if value is None else value)]


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) for name in value):
        raise ValueError("must be a list of names")
    return tuple(value)


Names = Annotated[tuple[str, ...], BeforeValidator(_names)]


def _tables(value: Any) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError("must be an array of tables (each written [[...]])")  # noqa: TRY004
    return tuple(value)


Tables = Annotated[tuple[T, ...], BeforeValidator(_tables)]  # an array of tables, `Tables[AggregateSpec]`


def _field_name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a field name (a non-empty string), got {value!r}")
    return value


FieldName = Annotated[str, BeforeValidator(_field_name)]


def _optional_text(value: Any) -> str | None:
    if not value:
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")  # noqa: TRY004
    return value


OptionalText = Annotated[str | None, BeforeValidator(_optional_text)]  # absent or "": none
NoneAsEmpty = PlainSerializer(lambda value: value or "")  # for a key whose "" means none


def _bound(value: Any) -> float | None:
    if value in ("inf", "-inf", None):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'bound {value!r} must be a number or "inf"')  # noqa: TRY004
    return float(value)


def _bounds(value: Any) -> dict[str, tuple[float | None, float | None]]:
    if not isinstance(value, dict):
        raise ValueError("must be a table of field = [min, max]")  # noqa: TRY004
    out = {}
    for name, pair in value.items():
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError(f'"{name}" must be [min, max]; use "inf" for no limit')
        out[name] = (_bound(pair[0]), _bound(pair[1]))
    return out


def _written_bounds(value: dict[str, tuple[float | None, float | None]]) -> dict[str, list[float | str]]:
    return {name: ["-inf" if low is None else low, "inf" if high is None else high]
            for name, (low, high) in value.items()}


Bounds = Annotated[dict[str, tuple[float | None, float | None]], BeforeValidator(_bounds),
                   PlainSerializer(_written_bounds)]


def _label_default(value: Any) -> float | None:
    if value == "drop":
        return None
    if not isinstance(value, (int, float)):  # a bool too: true is the label 1
        raise ValueError('must be a number or "drop"')  # noqa: TRY004
    return float(value)


LabelDefault = Annotated[float | None, BeforeValidator(_label_default),
                         PlainSerializer(lambda value: "drop" if value is None else value)]


def _identifier(value: str) -> str:
    if not value.isidentifier():
        raise ValueError(f'must be a plain identifier such as "driver", not "{value}"')
    return value


Identifier = Annotated[str, Strict(), AfterValidator(_identifier)]


def _located(value: str, info: ValidationInfo) -> str:
    """Resolve a relative path against the config file's directory (the `base_dir` in the context)."""
    base_dir = (info.context or {}).get("base_dir")
    path = Path(value)
    return str((base_dir / path).resolve()) if base_dir is not None and not path.is_absolute() else str(path)


def _located_if_given(value: str | None, info: ValidationInfo) -> str | None:
    return _located(value, info) if value else None


def _required_path(value: str, info: ValidationInfo) -> str:
    if not value:
        raise ValueError("is required: the file to read, relative to this config file")
    return _located(value, info)


FilePath = Annotated[str, Strict(), AfterValidator(_required_path)]
RequiredPath = Annotated[str, Strict(), Field(validate_default=True), AfterValidator(_required_path)]  # default ""
OptionalFilePath = Annotated[str | None, BeforeValidator(_optional_text), AfterValidator(_located_if_given)]
