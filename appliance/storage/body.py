"""An event's logged body: its payload and the feature vector it was scored on, as one blob,
compressed with a dictionary the store trained on its own first rows (rows layout 5).

The payload (`payloads.PayloadCodec`'s array) and the packed vector (`rows.VectorCodec`) of one event
are mostly structure that repeats from event to event: the shape's id, the categories, the vector's
plan. Compressed one row at a time they shrink little; with a dictionary trained on a few thousand
of the same store's rows, zstd takes the sample's 89 + 106 bytes to about 109 (`docs/benchmarks.md`).
A row stays a row: any one is read alone, by its seq, without its neighbours.

    byte 0        RAW (0) or ZSTD (1)
    RAW           varint(len(payload)), the payload's UTF-8 text, the packed vector (may be empty)
    ZSTD          varint(dictionary id), then a zstd frame (level 3, no checksum) of what RAW holds

The dictionary's id is a 32-bit digest of its bytes (the same id in every process), its bytes a row
of the `dictionaries` table, written in the transaction of the first row compressed with it. The
store writer's `BodyCodec` keeps the first `TRAIN_ROWS` bodies of a store without a dictionary RAW,
trains one on them (about 40 ms, once, on the writer's thread) and compresses every body after.
(Rewriting those first ones compressed was tried: the pages they free within are never reused by
rows appended in seq order, so the store was no smaller.)
`split_body` is the one reader (dictionaries from this process or `read_dictionaries`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

import zstandard

from appliance.storage.payloads import read_shapes
from appliance.storage.rows import UnknownNames, read_names, read_varint, varint

RAW, ZSTD = 0, 1
TRAIN_ROWS = 2_000  # bodies a dictionary is trained on (the store's first ones)
DICTIONARY_BYTES = 65_536
LEVEL = 3  # zstd's default: ~2 us a body here; higher levels were no smaller on these rows

_DECOMPRESSORS: dict[int, zstandard.ZstdDecompressor] = {}  # every dictionary seen in this process, by id


class Body(NamedTuple):
    """What an event row's `body` holds."""

    payload: str  # `payloads.PayloadCodec`'s text
    features: bytes | None  # `rows.VectorCodec`'s bytes; None for an event logged without a prediction


def dictionary_id(data: bytes) -> int:
    """A dictionary's id: a 32-bit digest of its bytes."""
    return int.from_bytes(hashlib.sha256(data).digest()[:4], "little")


def _raw(payload: str, features: bytes | None) -> bytes:
    text = payload.encode()
    return varint(len(text)) + text + (features or b"")


def raw_body(payload: str, features: bytes | None = None) -> bytes:
    """A body without compression (what a store writes before it has a dictionary).

    >>> split_body(raw_body('[1,"c7"]', b"\\x02")) == Body('[1,"c7"]', b"\\x02")
    True
    """
    return bytes([RAW]) + _raw(payload, features)


def split_body(blob: bytes) -> Body:
    """The payload and feature vector in an event row's `body`."""
    kind = blob[0]
    if kind == ZSTD:
        did, pos = read_varint(blob, 1)
        decompressor = _DECOMPRESSORS.get(did)
        if decompressor is None:
            raise UnknownNames(f"compression dictionary {did} is not in the store's dictionaries table")
        raw = decompressor.decompress(blob[pos:])
    elif kind == RAW:
        raw = blob[1:]
    else:
        raise UnknownNames(f"an event body has an unknown kind {kind}; start with --fresh")
    size, pos = read_varint(raw, 0)
    end = pos + size
    return Body(raw[pos:end].decode(), raw[end:] or None)


def register_dictionary(data: bytes) -> int:
    """Remember a dictionary (for `split_body`); return its id."""
    did = dictionary_id(data)
    if did not in _DECOMPRESSORS:
        _DECOMPRESSORS[did] = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(data))
    return did


def read_dictionaries(conn: Any) -> None:
    """Register every dictionary of a store (for `split_body`)."""
    for (data,) in conn.execute("SELECT data FROM dictionaries"):
        register_dictionary(data)


def read_codecs(conn: Any) -> dict[int, tuple[str, ...]]:
    """Register what a store's logged rows need to be read in this process: the compression
    dictionaries, the payload shapes and the feature names (returned, as `rows.read_names`)."""
    read_dictionaries(conn)
    read_shapes(conn)
    return read_names(conn)


class BodyCodec:
    """The store writer's side: bodies as blobs, RAW until the store has a dictionary, then ZSTD.

    `unwritten` holds the `dictionaries` row of a dictionary trained here and not yet committed: the
    writer inserts it in every transaction (`INSERT OR IGNORE`) until one commits (`written`).
    """

    def __init__(self, dictionaries: Iterable[bytes] = ()) -> None:
        self._compressor: zstandard.ZstdCompressor | None = None
        self._head = b""
        self._samples: list[bytes] = []  # RAW bodies without their kind byte
        self.unwritten: dict[str, Any] | None = None
        for data in dictionaries:  # the newest (the last) is the one compressing
            self._use(data)

    @classmethod
    def of_store(cls, conn: Any) -> BodyCodec:
        """The codec of a store: compressing with its newest dictionary, if it has one."""
        return cls([data for (data,) in conn.execute("SELECT data FROM dictionaries ORDER BY wall_ts, id")])

    def _use(self, data: bytes) -> None:
        did = register_dictionary(data)
        self._compressor = zstandard.ZstdCompressor(level=LEVEL, dict_data=zstandard.ZstdCompressionDict(data),
                                                    write_checksum=False, write_dict_id=False)
        self._head = bytes([ZSTD]) + varint(did)

    def encode(self, payload: str, features: bytes | None) -> bytes:
        """The body of an event row."""
        raw = _raw(payload, features)
        if self._compressor is not None:
            return self._head + self._compressor.compress(raw)
        self._samples.append(raw)
        if len(self._samples) >= TRAIN_ROWS:
            self._train()
        return bytes([RAW]) + raw

    def _train(self) -> None:
        samples, self._samples = self._samples, []
        try:
            data = zstandard.train_dictionary(DICTIONARY_BYTES, samples).as_bytes()
        except zstandard.ZstdError:  # too little to learn from (tiny, identical rows): stay RAW, try again later
            return
        self._use(data)
        self.unwritten = {"id": dictionary_id(data), "data": data, "wall_ts": time.time()}

    def written(self) -> None:
        """The transaction holding `unwritten` committed."""
        self.unwritten = None
