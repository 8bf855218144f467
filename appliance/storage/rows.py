"""Feature vectors as compact, versioned bytes: the names once per feature space, the values packed.

A logged vector is a sparse dict (a missing feature is absent) in the order `FeatureSpace.compute`
built it. `VectorCodec.encode` writes it as

    byte 0        layout: PACKED (1), or JSON (0: the whole vector as JSON, for a name the codec does
                  not know or a value that is neither a float nor a 64-bit int)
    bytes 1-4     the names' version: a 32-bit digest of the ordered names (little-endian), the key
                  of the store's `feature_names` table, so an engine needs no store to pick it
    varint        the length of the plan, then the plan:
                    varint runs, then per run zigzag(start - end of the previous run) and length:
                    the present names' indices, in the vector's own order;
                    2 bits per value, four to a byte: HALF, SINGLE, DOUBLE (the smallest IEEE
                    width that holds the float exactly) or INT (a Python int, 64 bits)
    values        little-endian, in the vector's order

A float comes back as the same float64, bit for bit (a narrower width is used only when the value
round-trips exactly; -0.0 keeps its sign; NaN goes as a double), an int as an int, and the dict in
the same order, so a sum over it gives the same float. Plans repeat (the same names present, the
same widths), so both sides cache them: a decode is one `struct.unpack_from` and a `zip`.
On the sample a vector of 25 present names out of 215 takes about 120 bytes instead of about
580 of JSON; zlib and zstd save little more on the packed rows (`docs/benchmarks.md`).

`decode_vector` is the one reader of logged vectors: the label join's restore, the bench, the tests.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from appliance.errors import ApplianceError

JSON, PACKED = 0, 1
HALF, SINGLE, DOUBLE, INT = 0, 1, 2, 3
_CODES = "efdq"  # struct codes of the kinds, in kind order
_E, _F, _D, _Q = (struct.Struct("<" + code) for code in _CODES)
_CACHE = 4096  # plans remembered per codec, and by the decoder
_VALUES = 65_536  # packed float values remembered per codec
INT_LIMIT = 1 << 63
_ZERO = (HALF, _E.pack(0.0))

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
        self._widths: dict[float, tuple[int, bytes]] = {}  # recent values, packed (counts, one-hots...)

    def encode(self, x: dict[str, Any]) -> bytes:
        """Return the bytes of a feature vector (see the module's docstring).

        >>> codec = VectorCodec(["a", "b", "c"])
        >>> blob = codec.encode({"c": 1.0, "a": 0.1})
        >>> len(blob), decode_vector(blob)
        (22, {'c': 1.0, 'a': 0.1})
        """
        keys = tuple(x)
        presence = self._presence.get(keys)
        if presence is None:
            presence = self._presence_of(keys)
            if presence is None:
                return json_vector(x)
        widths = self._widths
        packed: list[tuple[int, bytes]] = []
        for value in x.values():
            if type(value) is float and value:  # a non-zero float: equal means the same bits
                width = widths.get(value) or self._remember(value)
            else:
                width = _width(value)
                if width is None:
                    return json_vector(x)
            packed.append(width)
        kinds = tuple([width[0] for width in packed])
        plan_key = (presence, kinds)
        plan = self._plans.get(plan_key)
        if plan is None:
            plan = self._plan_of(presence, kinds)
            if len(self._plans) >= _CACHE:
                self._plans.clear()
            self._plans[plan_key] = plan
        return self._head + plan + b"".join([width[1] for width in packed])

    def _remember(self, value: float) -> tuple[int, bytes]:
        width = _width(value)
        if len(self._widths) >= _VALUES:
            self._widths.clear()
        self._widths[value] = width
        return width

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
        out = bytearray(_varint(len(runs)))
        end = 0
        for start, length in runs:
            out += _varint(_zigzag(start - end)) + _varint(length)
            end = start + length
        if len(self._presence) >= _CACHE:
            self._presence.clear()
        self._presence[keys] = presence = bytes(out)
        return presence

    @staticmethod
    def _plan_of(presence: bytes, kinds: tuple[int, ...]) -> bytes:
        packed = bytearray((len(kinds) + 3) // 4)
        for n, kind in enumerate(kinds):
            packed[n // 4] |= kind << (2 * (n % 4))
        plan = presence + bytes(packed)
        return _varint(len(plan)) + plan


def _width(value: Any) -> tuple[int, bytes] | None:
    """The value's kind and bytes in the narrowest width that holds it exactly; None if not a number."""
    cls = type(value)
    if cls is float:
        if value == 0.0:
            return _ZERO if math.copysign(1.0, value) > 0 else (HALF, _E.pack(value))
        try:
            packed = _E.pack(value)
            if _E.unpack(packed)[0] == value:
                return HALF, packed
            packed = _F.pack(value)
            if _F.unpack(packed)[0] == value:
                return SINGLE, packed
        except OverflowError:  # too large for the narrower width
            pass
        return DOUBLE, _D.pack(value)
    if cls is int and -INT_LIMIT <= value < INT_LIMIT:
        return INT, _Q.pack(value)
    return None  # bool, a big int, a string from a custom feature, None: the vector goes as JSON


def json_vector(x: dict[str, Any]) -> bytes:
    """A vector in the JSON layout (no codec at hand: a prediction packed by an earlier release)."""
    return bytes([JSON]) + orjson.dumps(x)


class _Plan(NamedTuple):
    names: tuple[str, ...]
    values: struct.Struct


_DECODE_PLANS: dict[tuple[int, bytes], _Plan] = {}


def decode_vector(blob: bytes, names: dict[int, Sequence[str]] | None = None) -> dict[str, Any]:
    """Return the feature vector in `blob`, in the order it was encoded.

    Names come from `names` (version -> names, as `read_names` returns) or from the versions this
    process registered.
    """
    if blob[0] != PACKED:
        if blob[0] == JSON:
            return orjson.loads(blob[1:])
        raise ApplianceError(f"a feature vector has an unknown layout {blob[0]}; start with --fresh")
    size, pos = _read_varint(blob, 5)
    end = pos + size
    key = (int.from_bytes(blob[1:5], "little"), blob[pos:end])
    plan = _DECODE_PLANS.get(key)
    if plan is None:
        plan = _plan_from(key[0], key[1], names)
        if len(_DECODE_PLANS) >= _CACHE:
            _DECODE_PLANS.clear()
        _DECODE_PLANS[key] = plan
    return dict(zip(plan.names, plan.values.unpack_from(blob, end)))


def _plan_from(version: int, plan: bytes, names: dict[int, Sequence[str]] | None) -> _Plan:
    table = (names or {}).get(version) or _NAMES.get(version)
    if table is None:
        raise UnknownNames(f"feature names version {version} is not in the store's feature_names table")
    count, pos = _read_varint(plan, 0)
    at: list[int] = []
    end = 0
    for _ in range(count):
        step, pos = _read_varint(plan, pos)
        length, pos = _read_varint(plan, pos)
        start = end + _unzigzag(step)
        at.extend(range(start, start + length))
        end = start + length
    codes = "".join(_CODES[(plan[pos + n // 4] >> (2 * (n % 4))) & 3] for n in range(len(at)))
    return _Plan(tuple(table[i] for i in at), struct.Struct("<" + codes))


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


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(blob: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        byte = blob[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return n, pos
        shift += 7
