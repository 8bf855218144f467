"""An event's payload as logged: a JSON array without its keys' names, the names once per shape
(`payload_shapes`), without the event id and time when the row holds them (`iso_millis` spells the
time both ways). Rows layout 4 and 5; `decode_payload` is the one reader.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from appliance.errors import ApplianceError
from appliance.storage.rows import CACHE, UnknownNames


class _Shape(NamedTuple):
    """How one payload shape is written and read back."""

    version: int  # its `payload_shapes` key: a 32-bit digest of `keys`, `pinned` and `id_field`
    order: tuple[str, ...]  # the keys whose values the array holds after the version, in that order
    keys: tuple[str, ...]  # the payload's keys in their order
    reads: tuple[int, ...]  # per key in `keys`: its value's index in the array, -1 (the row's event id) or -2
    time_as: str | None  # how the time left out is spelt from the row's ts: "iso" (`iso_millis`), "number"


class PayloadCodec:
    """An event's payload as a JSON array without its keys' names: the names once per shape.

    The text is `[shape, <pinned values>, <other values>]`: `shape` is the 32-bit digest of the
    payload's keys in their order (its row in `payload_shapes` names them, the pinned keys and
    whether the event id and time are left out); the entity keys come first at fixed positions (null
    when absent), so a per-key expression index on `json_extract(payload, '$[i]')` finds an entity's
    events; the other values follow in the payload's order, without the event id when it is the
    text the row's `event_id` column holds already, and without the event time when the row's `ts`
    spells it exactly (`iso_millis` of it, or the same float). `decode_payload` rebuilds the same
    dict, keys in the same order, given that event id and time.

    >>> codec = PayloadCodec(("card",), "event_id", "ts")
    >>> raw = {"event_id": "e1", "ts": "2026-01-01T00:00:03.500Z", "card": "c7", "amount": 3.5}
    >>> text = codec.encode(raw, "e1", 1767225603.5)
    >>> text.split(",", 1)[1], decode_payload(text, "e1", 1767225603.5) == raw
    ('"c7",3.5]', True)
    """

    def __init__(self, pinned: Sequence[str], id_field: str | None = None, time_field: str | None = None) -> None:
        self.pinned = tuple(pinned)
        self.id_field = id_field
        self.time_field = time_field
        self._shapes: dict[tuple[tuple[str, ...], bool, str | None], _Shape] = {}
        self.new_shapes: list[dict[str, Any]] = []  # `payload_shapes` rows not handed to the store yet

    def encode(self, raw: dict[str, Any], event_id: str | None = None, ts: float | None = None) -> str:
        """The payload's text; `event_id` and `ts` are the row's, left out of the text when the
        payload holds them (the time as the text `iso_millis` spells, or as the same float)."""
        omit = event_id is not None and self.id_field is not None and raw.get(self.id_field) == event_id
        time_as = None
        if ts is not None and self.time_field is not None:
            value = raw.get(self.time_field)
            if type(value) is str:
                time_as = "iso" if len(value) == 24 and value == iso_millis(ts) else None
            elif type(value) is float and value == ts:
                time_as = "number"
        key = (tuple(raw), omit, time_as)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._register(*key)
        return orjson.dumps([shape.version, *map(raw.get, shape.order)]).decode()

    def _register(self, keys: tuple[str, ...], omit: bool, time_as: str | None) -> _Shape:
        id_field = self.id_field if omit else None
        row = {"keys": list(keys), "pinned": list(self.pinned), **({"id": id_field} if omit else {}),
               **({"time": self.time_field, "time_as": time_as} if time_as else {})}
        text = orjson.dumps(row)
        version = int.from_bytes(hashlib.sha256(text).digest()[:4], "little")
        shape = _shape_of(version, keys, self.pinned, id_field, self.time_field if time_as else None, time_as)
        known = _SHAPES.setdefault(version, shape)
        if known != shape:
            raise ApplianceError(f"payload shape {version} already names other keys")
        if len(self._shapes) >= CACHE:
            self._shapes.clear()
        self._shapes[(keys, omit, time_as)] = shape
        self.new_shapes.append({"version": version, "keys": text.decode()})
        return shape

    def take_shapes(self) -> list[dict[str, Any]]:
        """The shapes first seen since the last call, as `payload_shapes` rows."""
        rows, self.new_shapes = self.new_shapes, []
        return rows


def _shape_of(version: int, keys: tuple[str, ...], pinned: tuple[str, ...], id_field: str | None,
              time_field: str | None = None, time_as: str | None = None) -> _Shape:
    rest = tuple(key for key in keys if key not in pinned and key != id_field and key != time_field)
    order = pinned + rest
    at = {key: i + 1 for i, key in enumerate(order)}
    if time_field is not None:
        at[time_field] = -2
    return _Shape(version, order, keys, tuple(at.get(key, -1) for key in keys), time_as)


_HOURS: dict[int, str] = {}  # "YYYY-MM-DDTHH:" per hour since the epoch (a few per stream-day)
_MINUTES_SECONDS = [f"{m:02d}:{s:02d}." for m in range(60) for s in range(60)]  # by second of the hour
_MILLIS = [f"{ms:03d}Z" for ms in range(1000)]


def iso_millis(ts: float) -> str:
    """An event time as ISO-8601 UTC text with milliseconds, as the payload codec spells it: the
    one function both sides use, so a time left out of a payload comes back as the same text.
    On the per-event path: three lookups and a concatenation.

    >>> iso_millis(1767225683.797), iso_millis(-0.0005), iso_millis(1767229199.9996)
    ('2026-01-01T00:01:23.797Z', '1970-01-01T00:00:00.000Z', '2026-01-01T01:00:00.000Z')
    """
    millis = math.floor(ts * 1000.0 + 0.5)
    hour, rest = divmod(millis, 3_600_000)
    prefix = _HOURS.get(hour)
    if prefix is None:
        if len(_HOURS) >= CACHE:
            _HOURS.clear()
        prefix = _HOURS[hour] = datetime.fromtimestamp(hour * 3600, tz=UTC).strftime("%Y-%m-%dT%H:")
    return prefix + _MINUTES_SECONDS[rest // 1000] + _MILLIS[rest % 1000]


_SHAPES: dict[int, _Shape] = {}


def read_shapes(conn: Any) -> None:
    """Register every payload shape of a store (for `decode_payload`)."""
    for version, text in conn.execute("SELECT version, keys FROM payload_shapes"):
        row = orjson.loads(text)
        _SHAPES.setdefault(version, _shape_of(version, tuple(row["keys"]), tuple(row["pinned"]), row.get("id"),
                                              row.get("time"), row.get("time_as")))


def decode_payload(text: str | bytes, event_id: str | None = None, ts: float | None = None) -> dict[str, Any]:
    """Return the event payload `PayloadCodec.encode` wrote for the row of `event_id` at `ts` (shapes
    from this process or `read_shapes`)."""
    values = orjson.loads(text)
    shape = _SHAPES.get(values[0])
    if shape is None:
        raise UnknownNames(f"payload shape {values[0]} is not in the store's payload_shapes table")
    if event_id is None and -1 in shape.reads:
        raise ApplianceError(f"payload shape {values[0]} leaves the event id to its row: pass it")
    if shape.time_as is None:
        return {key: values[i] if i >= 0 else event_id for key, i in zip(shape.keys, shape.reads)}
    if ts is None:
        raise ApplianceError(f"payload shape {values[0]} leaves the event time to its row: pass it")
    values.append(iso_millis(ts) if shape.time_as == "iso" else ts)  # index -2 after the event id at -1
    values.append(event_id)
    return {key: values[i] for key, i in zip(shape.keys, shape.reads)}
