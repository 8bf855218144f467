"""The on-disk format of checkpoints: plain data in a versioned envelope, River objects pickled one by one.

A checkpoint is a MessagePack map (`pack_checkpoint`) of named fields holding only plain data:
maps, lists, strings, numbers, booleans, None and bytes. Each stateful part writes its own fields
with a `to_data` method next to its state and reads them back with `from_data`/`load_data`, so the
classes that hold the state at run time can move or change without changing what is on disk.
MessagePack (the `msgpack` package) rather than JSON: bytes travel as bytes (the pickled River
objects, the logged feature JSON), floats keep infinities (an empty watermark is -inf), maps keep
non-string keys (River's `{False: p, True: q}`, version numbers), and its C packer costs about what
`pickle` does on the per-prediction path (a waiting prediction is packed with it, `label_join`).

River estimators, metrics and drift detectors are third-party objects: each is pickled on its own
(`dump_object`) under a named field. Those pickles are read only from the appliance's own
owner-only store, never from a socket. The appliance's own River extensions inside them (e.g.
`appliance.ScaleNumeric` in a pipeline) are found by class name, not by module path
(`load_object`), so moving a module does not break a stored model.

The envelope carries `FORMAT_VERSION`; `runtime.fingerprint` folds it (and `ROWS_FORMAT`, the logged
rows' layout) into the store's fingerprint,
so a store written in another format is refused at start with the usual "start with --fresh"
message, and `unpack_checkpoint` refuses one that got past it. A change to any `to_data` layout, or
to `entity_codec`'s byte layout, bumps `FORMAT_VERSION` (docs/reliability.md, "On-disk format").
"""

from __future__ import annotations

import importlib
import io
import pickle
import threading
from typing import Any

import msgpack

from appliance.errors import ConfigError

FORMAT_VERSION = 2  # 2: entity states of layout version 2 (running window totals)
# The layout of the logged rows: 1 feature vectors and payloads as JSON objects; 2 vectors packed and
# payloads as arrays by `appliance.storage.rows`, their names once per version in `feature_names` and
# `payload_shapes` (a waiting prediction's blob carries its packed vector too). `runtime.fingerprint`
# folds it in with FORMAT_VERSION, and `store.open_db` records it in the store's `store_format` table
# and refuses a store in another layout (one that has rows but no checkpoint yet, too). 3: an entity's
# newest events listed in `entity_recent` by the store writer instead of an expression index per key.
# 4: predictions and labels keyed by their event's `seq` (the rowid) without its id and time, one
# index on the history (events by time), origin and status as small ints, late labels apart, and a
# waiting prediction's blob carries its event's seq. 5: an event and its prediction in one row, the
# payload and the feature vector one `body` compressed with a dictionary of the store's (`body.py`),
# `predictions` a view, a learner score equal to the served one NULL.
ROWS_FORMAT = 5
KIND = "appliance-checkpoint"

_local = threading.local()


def pack(data: Any) -> bytes:
    """Encode plain data (maps, lists, str, bytes, numbers, bool, None) as MessagePack.

    >>> unpack(pack({"watermark": float("-inf"), 3: {True: 0.25}, "blob": b"\\x00"}))
    {'watermark': -inf, 3: {True: 0.25}, 'blob': b'\\x00'}
    """
    try:
        packer = _local.packer
    except AttributeError:  # one Packer per thread, reused: a new one per call costs more than the packing
        packer = _local.packer = msgpack.Packer(use_bin_type=True, default=_plain)
    return packer.pack(data)


def unpack(blob: bytes, *, tuples: bool = False) -> Any:
    """Decode what `pack` wrote: arrays as lists, or as tuples with `tuples` (MessagePack has one kind)."""
    return msgpack.unpackb(blob, raw=False, strict_map_key=False, use_list=not tuples)


def _plain(obj: Any) -> Any:
    """Numbers of other types (numpy scalars from a model) as Python numbers; anything else refused."""
    item = getattr(obj, "item", None)
    if callable(item):
        value = item()
        if isinstance(value, (int, float, bool)):
            return value
    raise TypeError(f"{type(obj).__name__} is not plain data; give it a to_data")


def pack_checkpoint(fields: dict[str, Any]) -> bytes:
    """The engine's core state as one versioned blob (the `checkpoint.engine` column)."""
    return pack({"kind": KIND, "format": FORMAT_VERSION, **fields})


def unpack_checkpoint(blob: bytes) -> dict[str, Any]:
    """Return the fields `pack_checkpoint` wrote; another format is refused with the way out."""
    try:
        data = unpack(blob)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        data = None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise ConfigError("the store's checkpoint is not in the appliance's on-disk format (written by an "
                          f"earlier build?); this release reads format {FORMAT_VERSION}; "
                          "start with --fresh or use another --db")
    if data.get("format") != FORMAT_VERSION:
        raise ConfigError(f"the store's checkpoint is in on-disk format {data.get('format')}; this release "
                          f"reads format {FORMAT_VERSION}; start with --fresh or use another --db")
    return data


def dump_object(obj: Any) -> bytes:
    """Pickle one third-party object (a River model, metric or detector) for the local store."""
    return pickle.dumps(obj, protocol=5)


def load_object(blob: bytes) -> Any:
    """Unpickle what `dump_object` wrote: only from our own store or a file the operator named."""
    return _Unpickler(io.BytesIO(blob)).load()


class _Unpickler(pickle.Unpickler):
    """Resolves the appliance's own classes by name wherever their module has moved."""

    def find_class(self, module: str, name: str) -> Any:
        if name in OWN_CLASSES and (module == "appliance" or module.startswith("appliance.")):
            return getattr(importlib.import_module(OWN_CLASSES[name]), name)
        return super().find_class(module, name)


# The appliance's own classes that live inside stored models (a River extension, the offline model),
# by the name they are stored under: part of the on-disk format, so a module may move without
# breaking a store. Resolved when first needed, like pickle resolves any class.
OWN_CLASSES = {"ScaleNumeric": "appliance.learning.scaling", "OnnxModel": "appliance.learning.onnx_model"}

