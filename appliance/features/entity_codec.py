"""Per-entity window state as bytes: a compact, versioned layout any process can decode.

The store's `entity_state.state` column holds these bytes, one row per (key, entity); another
process (an online store's reader) or a later release decodes them with `struct` alone, without
importing the appliance. This module imports only the standard library on purpose.

Layout, version 1 (every number little-endian, no padding)::

    offset  size    field
    0       1       u8   layout version (1)
    1       4       u32  n: number of values
    5       8*n     f64  the values: `entity_state.KeyLayout` positions (last event time, the
                         `last` fields, then each (field, window) ring: per bucket its id, count
                         and running stats; an empty position's id is -inf)
    ...     2       u16  d: number of distinct-count slots
    then, d times:
            4       u32  m: number of (hash, bucket) pairs in the slot, oldest bucket first
            12*m    m pairs of (u32 crc32 of the value, i64 bucket id)

What each value means depends on the key's layout (its aggregates, windows, buckets and allowed
lateness), which the config fixes; the store's fingerprint ties the two together. A reader that
finds another version byte refuses the bytes (`FormatError`) rather than misread them.

>>> from array import array
>>> state = (array("d", [5.0, float("-inf"), 1.0]), (((7, 2), (9, 3)),))
>>> decode_state(encode_state(state)) == state
True
"""

from __future__ import annotations

import struct
import sys
from array import array

LAYOUT_VERSION = 1

_HEAD = struct.Struct("<BI")
_COUNT16 = struct.Struct("<H")
_COUNT32 = struct.Struct("<I")
_PAIR = "Iq"


class FormatError(ValueError):
    """Bytes that are not an entity state of a layout version this module reads."""


def encode_state(state: tuple) -> bytes:
    """Return the bytes of one entity's state `(array('d') of values, tuple of distinct slots)`."""
    values, distinct = state
    if sys.byteorder != "little":  # pragma: no cover - every platform the appliance runs on is little-endian
        values = array("d", values)
        values.byteswap()
    parts = [_HEAD.pack(LAYOUT_VERSION, len(values)), values.tobytes(), _COUNT16.pack(len(distinct))]
    for pairs in distinct:
        parts.append(_COUNT32.pack(len(pairs)))
        if pairs:
            parts.append(struct.pack("<" + _PAIR * len(pairs), *(n for pair in pairs for n in pair)))
    return b"".join(parts)


def decode_state(blob: bytes) -> tuple:
    """Return the state `(array('d'), tuple of tuples of (hash, bucket))` that `encode_state` wrote."""
    if len(blob) < _HEAD.size or blob[0] != LAYOUT_VERSION:
        found = blob[0] if blob else "none"
        raise FormatError(f"entity state of layout version {found}; this release reads version {LAYOUT_VERSION}")
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
            slots.append(tuple(zip(flat[0::2], flat[1::2])))
    except struct.error as exc:
        raise FormatError(f"entity state cut short: {exc}") from None
    if at != len(blob):
        raise FormatError(f"entity state has {len(blob) - at} bytes past its end")
    return values, tuple(slots)
