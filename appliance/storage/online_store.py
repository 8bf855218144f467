"""The online store: the engine's current serving state in LMDB, readable by any process.

After each engine batch the flow writes, in one LMDB write transaction, the entity states the batch
changed (and deletes the ones it evicted), a small meta record (`OnlineMeta`: sequence number,
watermark, the served version, the format version) and, when they changed, the rest of what
`FeatureSpace.compute` reads: the label rates and the attribute tables' versions (`space`), and the
served version's pickled model (`model`). A reader in another process opens a read transaction and
sees one committed batch whole: states, meta and model agree. Readers never block the writer and
the writer never blocks readers (LMDB's MVCC: a reader holds a snapshot, not a lock).

Why LMDB: `/work/shared/spikes/online_store.py` (100,000 states, a writer process committing 200
states every 5 ms, 50,000 random reads from another process), rerun for this module on the 2 vCPU
AMD EPYC VM shared with other sessions: LMDB get + decode p50 4.08 us, p99 8.66 us; SQLite
primary-key reads (WAL) p50 11.01 us, p99 36.29 us (an earlier run: 3.6 / 7.4 against 7.2 / 34.7).
LMDB's reads are memory-mapped and lock-free; SQLite's pay for a statement and WAL lookups, and
their tail grows while a writer checkpoints the WAL.

This module stores bytes: entity states are the bytes of `features.entity_codec` (versioned, stdlib
decodable), `space` is JSON, the model a `storage.snapshot.dump_object` pickle from our own store.
The directory is owner-only (0700, files 0600): it holds the same data as the store. It is derived
state: every start rebuilds it from the restored checkpoint (`rebuild`), so after a kill -9 it
agrees with the checkpoint by construction; nothing in it is ever read back by the engine.

Layout (LMDB named databases, keys UTF-8)::

    states  <key> NUL <entity>  -> entity_codec bytes
    meta    b"meta"             -> JSON `OnlineMeta`
            b"space"            -> JSON {"label_rates": ..., "attributes": {name: version}}
            b"model"            -> the served version's pickled model
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import lmdb
import orjson

FORMAT_VERSION = 1  # of this store's layout (the meta record, the key spelling, the databases)
MAP_SIZE = 1 << 34  # the map's size (16 GiB: ~25 million entity states of 600 bytes); a sparse file
MAX_READERS = 256  # reader slots: one per thread of every serving process
SEP = b"\x00"


class OnlineStoreError(RuntimeError):
    """The online store is missing, of another format, or not yet written."""


@dataclass(frozen=True)
class OnlineMeta:
    """What a reader checks first: which batch it sees, and which version serves."""

    format: int
    seq: int  # batches published since the rebuild at start
    watermark: float | None
    version: int  # the served version's number
    version_name: str
    space_seq: int  # bumped each time `space` changes
    model_seq: int  # bumped each time `model` changes
    wall_ts: float  # when the batch was published (time.time(), for staleness)


@dataclass(frozen=True)
class Publication:
    """One batch's changes, written in one transaction."""

    meta: OnlineMeta
    states: Iterable[tuple[str, str, bytes]] = ()
    deleted: Iterable[tuple[str, str]] = ()
    space: dict | None = None  # None: unchanged
    model: bytes | None = None  # None: unchanged


def online_path(db_path: str | Path) -> Path:
    """Where a store's online store lives: the directory `<db>-online` beside it."""
    return Path(str(db_path) + "-online")


def state_key(key: str, entity: str) -> bytes:
    return key.encode() + SEP + entity.encode()


def _open(path: Path, readonly: bool) -> lmdb.Environment:
    # No writemap: writing pages in the shared map (5.5 against 13.6 us per state of a 1,000-state
    # transaction, /tmp micro-benchmark) dirties pages of a sparse file, and on a full disk the kernel
    # answers that with SIGBUS, killing the primary; write(2) answers ENOSPC, an `lmdb.Error` the
    # runtime retries after the next batch (tests/runtime/test_disk_full.py with serving children).
    return lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=4, max_readers=MAX_READERS, readonly=readonly,
                     sync=False, metasync=False, readahead=False, lock=True, subdir=True, create=not readonly,
                     writemap=False)


class OnlineWriter:
    """The one writer (the flow's process): rebuilt at start, then one transaction per batch.

    Not synced to disk per batch (`sync=False`): the online store is rebuilt from the checkpoint at
    every start, so a commit lost in a crash is never needed; readers in other processes see each
    commit at once through the shared map.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists():
            shutil.rmtree(self.path)  # derived state: rebuilt from the checkpoint, never trusted across starts
        self.path.mkdir(mode=0o700)
        os.chmod(self.path, 0o700)
        old = os.umask(0o077)
        try:
            self.env = _open(self.path, readonly=False)
        finally:
            os.umask(old)
        for name in os.listdir(self.path):
            os.chmod(self.path / name, 0o600)
        self.states = self.env.open_db(b"states")
        self.meta = self.env.open_db(b"meta")

    def write(self, publication: Publication) -> None:
        """Apply one batch's changes and its meta record, atomically."""
        with self.env.begin(write=True) as txn:
            states = self.states
            for key, entity, blob in publication.states:
                txn.put(state_key(key, entity), blob, db=states)
            for key, entity in publication.deleted:
                txn.delete(state_key(key, entity), db=states)
            if publication.space is not None:
                txn.put(b"space", orjson.dumps(publication.space), db=self.meta)
            if publication.model is not None:
                txn.put(b"model", publication.model, db=self.meta)
            txn.put(b"meta", orjson.dumps(asdict(publication.meta)), db=self.meta)

    def close(self) -> None:
        self.env.close()


class OnlineReader:
    """A reader in any process: one read transaction per request (`view`), never a lock."""

    def __init__(self, path: str | Path, env: lmdb.Environment | None = None) -> None:
        """Open the store at `path` read-only; in the writer's own process pass its `env` (LMDB
        allows one environment per file per process)."""
        self.path = Path(path)
        if env is None:
            if not (self.path / "data.mdb").exists():
                raise OnlineStoreError(f'no online store at "{self.path}" (is the appliance up?)')
            env = _open(self.path, readonly=True)
            self._owned = True
        else:
            self._owned = False
        self.env = env
        self.states = self.env.open_db(b"states", create=False)
        self.meta_db = self.env.open_db(b"meta", create=False)
        # The last meta record decoded, with its bytes: a batch's meta is read by every request until
        # the next batch, so it is decoded once per batch, not once per read.
        self.last_meta: tuple[bytes, OnlineMeta] | None = None

    def view(self) -> OnlineView:
        """A consistent snapshot of one committed batch; `close` it (or use `with`)."""
        return OnlineView(self, self.env.begin(buffers=False))

    def close(self) -> None:
        if self._owned:
            self.env.close()


class OnlineView:
    """One read transaction: meta, space, model and entity states of the same batch."""

    __slots__ = ("reader", "txn")

    def __init__(self, reader: OnlineReader, txn: lmdb.Transaction) -> None:
        self.reader, self.txn = reader, txn

    def __enter__(self) -> OnlineView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.txn.abort()

    def meta(self) -> OnlineMeta:
        blob = self.txn.get(b"meta", db=self.reader.meta_db)
        if blob is None:
            raise OnlineStoreError("the online store has no batch yet")
        last = self.reader.last_meta
        if last is not None and last[0] == blob:
            return last[1]
        data = orjson.loads(blob)
        if data.get("format") != FORMAT_VERSION:
            raise OnlineStoreError(f"online store of format {data.get('format')}; this release reads {FORMAT_VERSION}")
        meta = OnlineMeta(**data)
        self.reader.last_meta = (blob, meta)
        return meta

    def space(self) -> dict:
        blob = self.txn.get(b"space", db=self.reader.meta_db)
        return {} if blob is None else orjson.loads(blob)

    def model(self) -> bytes | None:
        return self.txn.get(b"model", db=self.reader.meta_db)

    def state(self, key: str, entity: str) -> bytes | None:
        return self.txn.get(state_key(key, entity), db=self.reader.states)

    def states(self) -> Iterator[tuple[str, str, bytes]]:
        """Every entity state (for checks and tests; a serving path reads one key at a time)."""
        with self.txn.cursor(db=self.reader.states) as cursor:
            for raw, blob in cursor:
                key, _, entity = bytes(raw).partition(SEP)
                yield key.decode(), entity.decode(), bytes(blob)
