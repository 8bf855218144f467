"""Parse and validate raw events: a line or a dict in, an `Event`, a `Label` or an error out.

One function, `parse_event`, serves every path (file replay, socket ingest, predict), so an event
means the same thing wherever it enters. A bad event raises `InvalidEvent` with a one-line reason;
callers turn that into a dead letter, never into a crash.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from appliance.config.file import EventSchema
from appliance.errors import InvalidEvent
from appliance.timeutil import format_timestamp, parse_timestamp

MAX_ID_LENGTH = 256
MAX_KEY_LENGTH = 256


class Event:
    """A validated event: id, event time, declared values, and its label when it carries one."""

    __slots__ = ("event_id", "ts", "values", "label", "raw")

    def __init__(self, event_id: str, ts: float, values: dict[str, Any], label: Any, raw: dict) -> None:
        self.event_id = event_id
        self.ts = ts
        self.values = values
        self.label = label
        self.raw = raw

    def __repr__(self) -> str:
        return f"Event({self.event_id!r}, ts={self.ts}, label={self.label!r})"


class Label:
    """A label that arrives on its own and names the event it belongs to."""

    __slots__ = ("event_id", "ts", "value")

    def __init__(self, event_id: str, ts: float | None, value: Any) -> None:
        self.event_id = event_id
        self.ts = ts
        self.value = value

    def __repr__(self) -> str:
        return f"Label({self.event_id!r}, ts={self.ts}, value={self.value!r})"


def decode(payload: bytes | str | dict) -> dict:
    """Return the JSON object in `payload`, or raise `InvalidEvent` saying why it is not one."""
    if isinstance(payload, dict):
        return payload
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {str(exc).splitlines()[0][:120]}") from None
    if not isinstance(data, dict):
        raise InvalidEvent(f"an event must be a JSON object, got {type(data).__name__}")
    return data


def parse_event(payload: bytes | str | dict, schema: EventSchema, task: str) -> Event | Label:
    """Validate one raw event against the schema.

    Args:
        payload: a JSON line or an already decoded object.
        schema: where the event keeps its fields.
        task: "classification" labels become bools, "regression" labels floats.

    Raises:
        InvalidEvent: with a one-line reason naming the field.
    """
    data = decode(payload)
    if schema.label_by == "type":
        if schema.type_field is not None and data.get(schema.type_field) == schema.label_type:
            return _label(data, schema, task)
    elif schema.label_id_field in data:
        return _label(data, schema, task)
    event_id = _event_id(data.get(schema.id_field), schema.id_field)
    if schema.time_field not in data:
        raise InvalidEvent(f'missing time field "{schema.time_field}"')
    ts = parse_timestamp(data[schema.time_field])
    values = _values(data, schema)
    label = data.get(schema.label_field)
    return Event(event_id, ts, values, None if label is None else parse_label(label, task), data)


def _label(data: dict, schema: EventSchema, task: str) -> Label:
    if schema.label_field not in data:
        raise InvalidEvent(f'label event has no "{schema.label_field}" field')
    return make_label(data.get(schema.label_id_field), data.get(schema.label_time_field), data[schema.label_field],
                      task, id_field=schema.label_id_field)


def make_label(event_id: Any, ts: Any, value: Any, task: str, id_field: str = "event_id") -> Label:
    """Validate a label's id, optional time and value (the `label` op and label events alike)."""
    return Label(_event_id(event_id, id_field), None if ts is None else parse_timestamp(ts), parse_label(value, task))


def check_not_ahead(ts: float, watermark: float, now: float, skew: float) -> None:
    """Refuse an event time more than `skew` ahead of both the stream's event time and the clock.

    One far-future time would otherwise become the watermark: every pending prediction defaulted,
    every entity unknown, retention deleting the history. A stream replaying its own future is
    allowed as long as it advances by less than `skew` at a time.

    >>> check_not_ahead(100.0, 50.0, 60.0, 3600.0)
    >>> check_not_ahead(1e9, 50.0, 60.0, 3600.0)
    Traceback (most recent call last):
    ...
    appliance.errors.InvalidEvent: event time 2001-09-09T01:46:40.000Z is more than max_future_skew (3600s) ahead of the stream (1970-01-01T00:00:50.000Z) and of the clock (1970-01-01T00:01:00.000Z)
    """
    if ts > (watermark if watermark > now else now) + skew:
        stream = format_timestamp(watermark) if math.isfinite(watermark) else "none yet"
        raise InvalidEvent(f"event time {format_timestamp(ts)} is more than max_future_skew ({skew:.0f}s) ahead of "
                           f"the stream ({stream}) and of the clock ({format_timestamp(now)})")


def parse_label(value: Any, task: str) -> bool | float:
    """Return a label as the task wants it: bool for classification, float for regression."""
    if task == "classification":
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("0", "1", "true", "false"):
            return value.lower() in ("1", "true")
        raise InvalidEvent(f"label {str(value)[:40]!r} is not binary (use true/false or 1/0)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidEvent(f"label {str(value)[:40]!r} is not a finite number")
    return float(value)


def _event_id(value: Any, field: str) -> str:
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is None:
        raise InvalidEvent(f'missing id field "{field}"')
    raise InvalidEvent(f'id field "{field}" must be a non-empty string of at most {MAX_ID_LENGTH} characters')


def _values(data: dict, schema: EventSchema) -> dict[str, Any]:
    values: dict[str, Any] = {}
    optional = schema.optional
    for name in schema.keys:
        value = data.get(name)
        if value is None:
            if name in optional:
                continue
            raise InvalidEvent(f'missing entity key "{name}"')
        if isinstance(value, bool) or not isinstance(value, (str, int)) or len(str(value)) > MAX_KEY_LENGTH:
            raise InvalidEvent(f'entity key "{name}" must be a string or an integer')
        values[name] = str(value)
    for name in schema.numeric:
        value = data.get(name)
        if value is None:
            if name in optional:
                continue
            raise InvalidEvent(f'missing numeric field "{name}"')
        values[name] = _number(name, value, schema.bounds.get(name))
    for name in schema.categorical:
        value = data.get(name)
        if value is None:
            if name in optional:
                continue
            raise InvalidEvent(f'missing categorical field "{name}"')
        if not isinstance(value, (str, int, bool)):
            raise InvalidEvent(f'categorical field "{name}" must be a string')
        values[name] = str(value)
    return values


def _number(name: str, value: Any, bounds: tuple[float | None, float | None] | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEvent(f'field "{name}" must be a number, got {str(value)[:40]!r}')
    try:
        number = float(value)
    except OverflowError:
        raise InvalidEvent(f'field "{name}" is too large for a float') from None
    if not math.isfinite(number):
        raise InvalidEvent(f'field "{name}" is not finite')
    if bounds is not None:
        low, high = bounds
        if (low is not None and number < low) or (high is not None and number > high):
            raise InvalidEvent(f'field "{name}" = {number:g} is outside [{low}, {high}]')
    return number
