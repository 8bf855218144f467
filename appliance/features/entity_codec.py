"""Per-entity window state as bytes: a compact, versioned layout any process can decode.

The store's `entity_state.state` column holds these bytes, one row per (key, entity); another
process (an online store's reader) or a later release decodes them with `struct` alone, without
importing the appliance. This module imports only the standard library on purpose.

Layout, version 2 (every number little-endian, no padding)::

    offset  size    field
    0       1       u8   layout version (2)
    1       4       u32  n: number of values
    5       8*n     f64  the values: `entity_state.KeyLayout` positions (last event time, the
                         `last` fields, then each (field, window) slot: its ring, per bucket its
                         id, count and running stats (an empty position's id is -inf), then the
                         id of its newest bucket (-inf before any) and B-1 partial window totals,
                         each a count and the running stats)
    ...     2       u16  d: number of distinct-count slots
    then, d times:
            4       u32  m: number of (hash, bucket) pairs in the slot, oldest bucket first
            12*m    m pairs of (u32 crc32 of the value, i64 bucket id)

What each value means depends on the key's layout (its aggregates, windows, buckets and allowed
lateness), which the config fixes; the store's fingerprint ties the two together. A reader that
finds another version byte refuses the bytes (`FormatError`) rather than misread them. Version 1
had no newest bucket id and no partial totals after each ring: its values would be misread as
version 2's, so its bytes are refused (start with --fresh).

In memory a distinct-count slot is one flat `array('q')`, hash, bucket, hash, bucket, ...
(`distinct_pairs.add_pair`): the pairs in the order the bytes hold them.

>>> from array import array
>>> state = (array("d", [5.0, float("-inf"), 1.0]), (array("q", [7, 2, 9, 3]),))
>>> decode_state(encode_state(state)) == state
True
"""

from __future__ import annotations

import struct
import sys
from array import array

LAYOUT_VERSION = 2

_HEAD = struct.Struct("<BI")
_COUNT16 = struct.Struct("<H")
_COUNT32 = struct.Struct("<I")
_PAIR = "Iq"


class FormatError(ValueError):
    """Bytes that are not an entity state of a layout version this module reads."""


def encode_state(state: tuple) -> bytes:
    """Return the bytes of one entity's state `(array('d') of values, tuple of distinct slots)`,
    each slot an `array('q')` of hash, bucket, hash, bucket, ..."""
    values, distinct = state
    if sys.byteorder != "little":  # pragma: no cover - every platform the appliance runs on is little-endian
        values = array("d", values)
        values.byteswap()
    parts = [_HEAD.pack(LAYOUT_VERSION, len(values)), values.tobytes(), _COUNT16.pack(len(distinct))]
    for pairs in distinct:
        parts.append(_COUNT32.pack(len(pairs) // 2))
        if pairs:
            parts.append(struct.pack("<" + _PAIR * (len(pairs) // 2), *pairs))
    return b"".join(parts)


def decode_state(blob: bytes) -> tuple:
    """Return the state `(array('d'), tuple of array('q') of hash, bucket, ...)` that `encode_state` wrote."""
    if len(blob) < _HEAD.size or blob[0] != LAYOUT_VERSION:
        found = blob[0] if blob else "none"
        raise FormatError(f"entity state of layout version {found}; this release reads version {LAYOUT_VERSION}; "
                          "start with --fresh")
    try:
        _, n = _HEAD.unpack_from(blob, 0)
        at = _HEAD.size
        values = array("d")
        values.frombytes(blob[at:at + 8 * n])
        if len(values) != n:
            raise FormatError(f"entity state cut short: {len(values)} of {n} values")
        if sys.byteorder != "little":  # pragma: no cover
            values.byteswap()
        at += 8 * n
        (d,) = _COUNT16.unpack_from(blob, at)
        at += _COUNT16.size
        slots = []
        for _ in range(d):
            (m,) = _COUNT32.unpack_from(blob, at)
            at += _COUNT32.size
            flat = struct.unpack_from("<" + _PAIR * m, blob, at)
            at += 12 * m
            slots.append(array("q", flat))
    except struct.error as exc:
        raise FormatError(f"entity state cut short: {exc}") from None
    if at != len(blob):
        raise FormatError(f"entity state has {len(blob) - at} bytes past its end")
    return values, tuple(slots)
