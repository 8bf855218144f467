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
`SourceIds` does the same for the source an event came from (its text once per source);
`storage.payloads` for an event's payload (its keys once per shape).
"""

from __future__ import annotations

import hashlib
import math
import operator
import struct
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import orjson

from appliance.errors import ApplianceError

JSON, PACKED_2BIT, PACKED = 0, 1, 2
HALF, SINGLE, DOUBLE, INT, ZERO, ONE = 0, 1, 2, 3, 4, 5
_CODES = ("e", "f", "d", "q", "", "")  # struct codes of the kinds, in kind order (ZERO, ONE: no bytes)
_CONSTANTS = (0.0, 1.0)  # the values of ZERO and ONE, after the packed ones in a decode's source
CACHE = 4096  # plans remembered per codec, and by the decoder
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
            if len(self._plans) >= CACHE:
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
        if len(self._presence) >= CACHE:
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
        if len(_DECODE_PLANS) >= CACHE:
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
