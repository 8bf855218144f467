"""Feature vectors as compact, versioned bytes: the names once per feature space, the values packed.

A logged vector is a sparse dict (a missing feature is absent) in the order `FeatureSpace.compute`
built it. `VectorCodec.encode` writes it as

    byte 0        layout: PACKED (2), or JSON (0: the whole vector as JSON, for a name the codec does
                  not know or a value that is neither a float nor a 64-bit int); rows layout 3
                  wrote 1 (2 bits per kind, no ZERO or ONE), still read
    bytes 1-4     the names' version: a 32-bit digest of the ordered names (little-endian), the key
                  of the store's `feature_names` table, so an engine needs no store to pick it
    varint        the length of the plan, then the plan:
                    varint runs, then per run zigzag(start - end of the previous run) and length:
                    the present names' indices, in the vector's own order;
                    3 bits per value, little-endian across the plan's bytes: HALF (an integral
                    float to 2,048, -0.0), SINGLE (an integral float to 2**24), DOUBLE (any other
                    float), INT (a Python int, 64 bits), ZERO (0.0) or ONE (1.0): these two are
                    in the plan alone, no value bytes (a hashed one-hot, an empty aggregate)
    values        little-endian, in the vector's order, ZERO and ONE left out

A float comes back as the same float64, bit for bit (a narrower width only for integral values,
which it holds exactly; -0.0 keeps its sign; NaN goes as a double), an int as an int, and the dict
in the same order, so a sum over it gives the same float. Plans repeat (the same names present, the
same widths), so both sides cache them: a decode is one `struct.unpack_from` and a `zip`.
On the sample a vector of 25 present names out of 215 takes about 100 bytes instead of about
580 of JSON (about 125 before ZERO and ONE, half of its values being one or the other); zlib and zstd save little more on the packed rows (`docs/benchmarks.md`).

`decode_vector` is the one reader of logged vectors: the label join's restore, the bench, the tests.
`PayloadCodec` / `decode_payload` do the same for an event's payload (its keys once per shape), and
`SourceIds` for the source an event came from (its text once per source).
"""

from __future__ import annotations

import hashlib
import math
import operator
import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from appliance.errors import ApplianceError

JSON, PACKED_2BIT, PACKED = 0, 1, 2
HALF, SINGLE, DOUBLE, INT, ZERO, ONE = 0, 1, 2, 3, 4, 5
_CODES = ("e", "f", "d", "q", "", "")  # struct codes of the kinds, in kind order (ZERO, ONE: no bytes)
_CONSTANTS = (0.0, 1.0)  # the values of ZERO and ONE, after the packed ones in a decode's source
_CACHE = 4096  # plans remembered per codec, and by the decoder
INT_LIMIT = 1 << 63

_NAMES: dict[int, tuple[str, ...]] = {}  # every names version seen in this process (content-addressed)


class UnknownNames(ApplianceError):
    """A packed vector names a feature-space version that neither this process nor the store knows."""


def names_version(names: Sequence[str]) -> int:
    """The version of an ordered list of names: a 32-bit digest of them (stable across processes).

    >>> names_version(["a", "b"]) == names_version(("a", "b")) != names_version(["b", "a"])
    True
    """
    digest = hashlib.sha256(orjson.dumps(list(names))).digest()
    return int.from_bytes(digest[:4], "little")


def register_names(names: Sequence[str]) -> int:
    """Remember an ordered list of names (for `decode_vector`); return its version."""
    version = names_version(names)
    known = _NAMES.setdefault(version, tuple(names))
    if known != tuple(names):  # two feature spaces with one digest: refuse rather than mislabel
        raise ApplianceError(f"feature names version {version} already names another feature space")
    return version


def known_names(version: int) -> tuple[str, ...] | None:
    """The names registered under `version`, if any."""
    return _NAMES.get(version)


class VectorCodec:
    """Encodes the vectors of one feature space (its ordered `names`)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.version = register_names(self.names)
        self.index = {name: i for i, name in enumerate(self.names)}
        self._head = bytes([PACKED]) + self.version.to_bytes(4, "little")
        self._presence: dict[tuple[str, ...], bytes | None] = {}
        self._plans: dict[tuple[bytes, tuple[int, ...]], bytes] = {}

    def encode(self, x: dict[str, Any]) -> bytes:
        """Return the bytes of a feature vector (see the module's docstring).

        >>> codec = VectorCodec(["a", "b", "c"])
        >>> blob = codec.encode({"c": 1.0, "a": 0.1})
        >>> len(blob), decode_vector(blob)
        (20, {'c': 1.0, 'a': 0.1})
        """
        keys = tuple(x)
        presence = self._presence.get(keys)
        if presence is None:
            presence = self._presence_of(keys)
            if presence is None:
                return json_vector(x)
        values = tuple(x.values())
        kinds = tuple([_kind(value) for value in values])  # small ints: no object made per value
        if None in kinds:
            return json_vector(x)
        plan_key = (presence, kinds)
        plan = self._plans.get(plan_key)
        if plan is None:
            plan = self._plan_of(presence, kinds)
            if len(self._plans) >= _CACHE:
                self._plans.clear()
            self._plans[plan_key] = plan
        return self._head + plan.head + plan.values.pack(*plan.pick(values))  # one call packs every width

    def _presence_of(self, keys: tuple[str, ...]) -> bytes | None:
        index = self.index
        try:
            at = [index[name] for name in keys]
        except KeyError:
            return None
        runs: list[list[int]] = []
        for i in at:
            if runs and i == runs[-1][0] + runs[-1][1]:
                runs[-1][1] += 1
            else:
                runs.append([i, 1])
        out = bytearray(varint(len(runs)))
        end = 0
        for start, length in runs:
            out += varint(_zigzag(start - end)) + varint(length)
            end = start + length
        if len(self._presence) >= _CACHE:
            self._presence.clear()
        self._presence[keys] = presence = bytes(out)
        return presence

    @staticmethod
    def _plan_of(presence: bytes, kinds: tuple[int, ...]) -> _EncodePlan:
        bits = sum(kind << (3 * n) for n, kind in enumerate(kinds))
        plan = presence + bits.to_bytes((3 * len(kinds) + 7) // 8, "little")
        stored = [n for n, kind in enumerate(kinds) if kind < ZERO]
        return _EncodePlan(varint(len(plan)) + plan, struct.Struct("<" + "".join(_CODES[kind] for kind in kinds)),
                           _picker(stored))


class _EncodePlan(NamedTuple):
    head: bytes  # the plan's length and the plan
    values: struct.Struct  # the stored values at their widths, in the vector's order
    pick: Callable[[tuple], tuple]  # the stored values of a vector's values (not its ZEROs and ONEs)


def _picker(indices: Sequence[int]) -> Callable[[tuple], tuple]:
    """`operator.itemgetter(*indices)` that always returns a tuple (one C call per vector)."""
    if len(indices) == 1:
        only = indices[0]
        return lambda values: (values[only],)
    if not indices:
        return lambda values: ()
    return operator.itemgetter(*indices)


def _kind(value: Any) -> int | None:
    """The value's kind: a width that holds it exactly; None if not a float or a 64-bit int.

    An integral float of at most 11 significant bits (every count to 2,048, and -0.0) is a half, one
    to 2**24 a single, any other float a double: a cheaper test than trying each width, and it
    catches the values that repeat. Only the kind (a small int, never a new object): the plan's
    `struct` packs the whole vector in one call, so an encode makes a handful of objects, not one
    per value (in the engine's large heap each one brings the next garbage collection nearer).
    """
    cls = type(value)
    if cls is float:
        if value.is_integer():
            if value == 1.0:
                return ONE
            if value == 0.0:
                return ZERO if math.copysign(1.0, value) > 0.0 else HALF  # -0.0 keeps its sign
            if -2048.0 <= value <= 2048.0:
                return HALF
            if -16777216.0 <= value <= 16777216.0:
                return SINGLE
        return DOUBLE
    if cls is int and -INT_LIMIT <= value < INT_LIMIT:
        return INT
    return None  # bool, a big int, a string from a custom feature, None: the vector goes as JSON


def json_vector(x: dict[str, Any]) -> bytes:
    """A vector in the JSON layout (no codec at hand: a prediction packed by an earlier release)."""
    return bytes([JSON]) + orjson.dumps(x)


class _Plan(NamedTuple):
    names: tuple[str, ...]
    values: struct.Struct  # the stored values
    order: Callable[[tuple], tuple]  # the vector's values from the stored ones followed by `_CONSTANTS`


_DECODE_PLANS: dict[tuple[int, bytes], _Plan] = {}


def decode_vector(blob: bytes, names: dict[int, Sequence[str]] | None = None) -> dict[str, Any]:
    """Return the feature vector in `blob`, in the order it was encoded.

    Names come from `names` (version -> names, as `read_names` returns) or from the versions this
    process registered.
    """
    layout = blob[0]
    if layout != PACKED and layout != PACKED_2BIT:
        if layout == JSON:
            return orjson.loads(blob[1:])
        raise ApplianceError(f"a feature vector has an unknown layout {layout}; start with --fresh")
    size, pos = read_varint(blob, 5)
    end = pos + size
    key = (int.from_bytes(blob[1:5], "little"), blob[pos:end], layout)
    plan = _DECODE_PLANS.get(key)
    if plan is None:
        plan = _plan_from(*key, names)
        if len(_DECODE_PLANS) >= _CACHE:
            _DECODE_PLANS.clear()
        _DECODE_PLANS[key] = plan
    return dict(zip(plan.names, plan.order(plan.values.unpack_from(blob, end) + _CONSTANTS)))


def _plan_from(version: int, plan: bytes, layout: int, names: dict[int, Sequence[str]] | None) -> _Plan:
    table = (names or {}).get(version) or _NAMES.get(version)
    if table is None:
        raise UnknownNames(f"feature names version {version} is not in the store's feature_names table")
    count, pos = read_varint(plan, 0)
    at: list[int] = []
    end = 0
    for _ in range(count):
        step, pos = read_varint(plan, pos)
        length, pos = read_varint(plan, pos)
        start = end + _unzigzag(step)
        at.extend(range(start, start + length))
        end = start + length
    if layout == PACKED_2BIT:
        kinds = [(plan[pos + n // 4] >> (2 * (n % 4))) & 3 for n in range(len(at))]
    else:
        bits = int.from_bytes(plan[pos:], "little")
        kinds = [(bits >> (3 * n)) & 7 for n in range(len(at))]
    if any(kind > ONE for kind in kinds):
        raise ApplianceError(f"a feature vector has an unknown value kind in {kinds}; start with --fresh")
    stored = sum(kind < ZERO for kind in kinds)
    order, n = [], 0
    for kind in kinds:  # a stored value's index in the source, or a constant's after them
        order.append(n if kind < ZERO else stored + kind - ZERO)
        n += kind < ZERO
    return _Plan(tuple(table[i] for i in at), struct.Struct("<" + "".join(_CODES[kind] for kind in kinds)),
                 _picker(order))


def read_names(conn: Any) -> dict[int, tuple[str, ...]]:
    """Every names version in a store's `feature_names` table (registered for `decode_vector` too)."""
    out: dict[int, tuple[str, ...]] = {}
    for version, names in conn.execute("SELECT version, names FROM feature_names"):
        out[version] = tuple(orjson.loads(names))
        _NAMES.setdefault(version, out[version])
    return out


def names_row(codec: VectorCodec) -> dict[str, Any]:
    """The `feature_names` row of a codec's feature space."""
    return {"version": codec.version, "names": orjson.dumps(list(codec.names)).decode()}


def _zigzag(n: int) -> int:
    return (n << 1) if n >= 0 else ((-n << 1) - 1)


def _unzigzag(n: int) -> int:
    return (n >> 1) if not n & 1 else -((n + 1) >> 1)


def varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(blob: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        byte = blob[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return n, pos
        shift += 7


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
        if len(self._shapes) >= _CACHE:
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
        if len(_HOURS) >= _CACHE:
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


class SourceIds:
    """The events' sources as 32-bit ids: a digest of the source's text (the same id in every process,
    no state to keep), the text once per source in the `sources` table.

    >>> ids = SourceIds()
    >>> ids.id_of("/data/events.jsonl") == SourceIds().id_of("/data/events.jsonl"), ids.take_rows()[0]["source"]
    (True, '/data/events.jsonl')
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self.new_rows: list[dict[str, Any]] = []  # `sources` rows not handed to the store yet

    def id_of(self, source: str) -> int:
        known = self._ids.get(source)
        if known is not None:
            return known
        sid = int.from_bytes(hashlib.sha256(source.encode()).digest()[:4], "little")
        if _SOURCES.setdefault(sid, source) != source:
            raise ApplianceError(f'sources "{_SOURCES[sid]}" and "{source}" have one id; rename one')
        self._ids[source] = sid
        self.new_rows.append({"id": sid, "source": source})
        return sid

    def take_rows(self) -> list[dict[str, Any]]:
        """The sources first seen since the last call, as `sources` rows."""
        rows, self.new_rows = self.new_rows, []
        return rows


_SOURCES: dict[int, str] = {}


# A prediction's origin and a label's status as the small ints their rows hold (rows layout 4): the
# index in these tuples (0 and 1 take no bytes in a SQLite record). A late label has its own table.
ORIGINS = ("stream", "socket")
LABEL_STATUSES = ("defaulted", "joined", "immediate", "early")


def origin_code(origin: str) -> int:
    """The int a prediction row holds for its origin.

    >>> origin_code("socket"), ORIGINS[origin_code("stream")]
    (1, 'stream')
    """
    return ORIGINS.index(origin)


def status_code(status: str) -> int:
    """The int a label row holds for its status.

    >>> status_code("joined"), LABEL_STATUSES[status_code("defaulted")]
    (1, 'defaulted')
    """
    return LABEL_STATUSES.index(status)
