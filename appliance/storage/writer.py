"""The store's single writer thread: batched, ordered, idempotent writes.

`StoreWriter` owns the only write connection. The engine hands it rows in batches through a bounded
queue (a full queue blocks the flow: backpressure, never unbounded memory) and it commits them in
few, large transactions, off the hot path. A checkpoint travels through the same queue, so it is
committed after every row it covers: after a crash the last checkpoint never claims rows that are
missing, and rows written after it are rewritten on replay with the same keys (idempotent). An
event and its prediction become one row (rows layout 5), its body compressed here (`body.BodyCodec`).

The batched writes use `executemany` with prepared statements because sqlite-utils' per-row type
handling would cost the flow ~10 µs per event.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from appliance.errors import ApplianceError
from appliance.storage.body import BodyCodec
from appliance.storage.entity_history import RecentEntities
from appliance.storage.registry import thin_models
from appliance.storage.retention import PRUNED, prune_by_age, prune_to_bytes, used_bytes
from appliance.storage.store import EVENT_COLUMNS, TABLES, open_db

log = logging.getLogger(__name__)

MAX_QUEUED_ROWS = 20_000  # rows handed to the writer and not yet written (~30 MB on the sample)
PRUNE_EVERY = 3600.0  # seconds of event time between two retention passes
RELEASE_EVERY = 30.0  # wall seconds between two releases of input that a checkpoint covers
RETRY_EVERY = 1.0  # seconds between two attempts at a transaction that failed (a full disk)


class StoreWriter:
    """The single writer thread: batched, ordered, idempotent writes."""

    def __init__(self, path: str | Path, *, max_batches: int = 256, max_rows: int = MAX_QUEUED_ROWS,
                 commit_every: float = 0.05, retention: dict[str, float] | None = None,
                 max_bytes: int | None = None, keep_models: int | None = None, cache_bytes: int = 0,
                 entity_keys: tuple[str, ...] = (), release_every: float | None = None,
                 identity: tuple[int, int] | None = None) -> None:
        """`identity`: the store file's (device, inode) as the caller opened it, when the writer is
        built later (in its own process); a file deleted or replaced before then is refused as after."""
        self.path = str(path)
        self.release_every = RELEASE_EVERY if release_every is None else release_every
        self.entity_keys = tuple(entity_keys)  # the keys whose newest events `entity_recent` lists, payload order
        self._recent = RecentEntities(self.entity_keys)  # each touched entity's row once per transaction
        self._bodies: BodyCodec | None = None  # the events' bodies, compressed once the store has a dictionary
        self.cache_bytes = cache_bytes  # the write connection's page cache (0: SQLite's default, 2 MB)
        self.cache_limit: int | None = None  # the bound the connection took, in bytes, once started
        # The newest versions whose model bytes stay (`registry.thin_models`; None: never thin).
        self.keep_models = keep_models
        self.models_thinned = 0
        self._models_written = True  # thin at the first checkpoint, then after new versions
        self.retention = dict(retention or {})
        self.pruned = dict.fromkeys(self.retention, 0)
        self.max_bytes = max_bytes  # the byte bound of the store's pages in use (None: age only)
        self.pruned_for_bytes = dict.fromkeys(PRUNED, 0)
        self.used_bytes: int | None = None  # pages in use at the last checkpoint, in bytes
        self._next_prune = -float("inf")
        self.commit_every = commit_every
        self._queue: queue.Queue = queue.Queue(maxsize=max_batches)
        # Bounded by rows as well as batches: a batch's size follows how far the flow is behind, so
        # a count of batches alone would not bound memory when the disk is the bottleneck.
        self.max_rows = max_rows
        self._queued_rows = 0
        self._room = threading.Condition()
        self.waits = 0  # times the flow waited for room: the store was the bottleneck
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._sql = {name: _insert_sql(name, list(columns)) for name, (columns, _) in TABLES.items()}
        self.rows_written = 0
        self.transactions = 0
        # Called (on this thread) with the input offsets of a checkpoint once it is durable, so the
        # inbox can give back the disk space of what no restart will read again.
        self.after_durable_checkpoint: Callable[[dict[str, int]], None] | None = None
        self._committed_offsets: dict[str, int] | None = None
        self._next_release = time.monotonic() + self.release_every
        self.error: BaseException | None = None
        self.failure: str | None = None  # why writes fail right now (a full disk...), None when they do not
        self.write_failures = 0
        self._abandoned = threading.Event()
        open_db(self.path).conn.close()
        st = os.stat(self.path)
        # From the child's JSON options a list: the same two numbers.
        self._identity = (st.st_dev, st.st_ino) if identity is None else (int(identity[0]), int(identity[1]))

    def wait_ready(self) -> None:
        """Nothing to wait for: the store was opened when this writer was built (`WriterProcess` waits)."""

    def start(self) -> StoreWriter:
        self._thread.start()
        return self

    @property
    def lost(self) -> bool:
        """Whether the writer died and must be replaced (`writer_process.WriterProcess`); a thread never is:
        its failure stays an outage until the appliance stops."""
        return False

    def put_rows(self, rows: dict[str, list[dict]]) -> None:
        """Queue rows for writing; blocks while `max_rows` rows (or `max_batches`) are queued.

        Once the writer has given up (`abandon`, or the store file is gone), rows are dropped: no
        checkpoint will commit after them either, so the next start redoes their work.
        """
        count = sum(map(len, rows.values()))
        if not count:
            return
        with self._room:
            if self._queued_rows and self._queued_rows + count > self.max_rows:
                self.waits += 1
                while (self._queued_rows and self._queued_rows + count > self.max_rows and self._thread.is_alive()
                       and not self._abandoned.is_set()):
                    self._room.wait(0.5)
            self._queued_rows += count
        self._put(("rows", rows))

    def stats(self) -> dict[str, Any]:
        """What is waiting to be written, and what was written; `failure` while writes fail."""
        return {"queued_rows": self._queued_rows, "max_rows": self.max_rows, "rows_written": self.rows_written,
                "transactions": self.transactions, "waits": self.waits, "failure": self.failure,
                "write_failures": self.write_failures, "max_bytes": self.max_bytes, "used_bytes": self.used_bytes,
                "pruned": dict(self.pruned), "pruned_for_bytes": dict(self.pruned_for_bytes),
                "models_thinned": self.models_thinned,
                "cache_limit": self.cache_limit}

    def put_checkpoint(self, fingerprint: str, payload: dict[str, Any]) -> None:
        """Queue a checkpoint; it commits after all rows queued before it."""
        self._put(("checkpoint", (fingerprint, payload)))

    def _put(self, item: tuple) -> None:
        while not self._abandoned.is_set() and self._thread.is_alive():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until everything queued so far is committed."""
        done = threading.Event()
        self.mark(done)
        return done.wait(timeout)

    def mark(self, done: Any) -> None:
        """Queue a marker: `done.set()` is called on the writer's thread once everything queued before
        it is committed (`writer_process` reports a flush to the primary this way)."""
        self._queue.put(("flush", done))

    def abandon(self) -> None:
        """Stop retrying a failing store: drop what is queued and what comes; the thread ends.

        Nothing acknowledged is lost: the last committed checkpoint covers only committed rows,
        and the next start reads the inputs again from its offsets.
        """
        self._abandoned.set()
        with self._room:
            self._room.notify_all()

    def close(self, timeout: float = 60.0) -> None:
        """Commit what is queued and stop the thread (or give up at once if the store is failing)."""
        deadline = time.monotonic() + timeout
        stop_sent = False
        while self._thread.is_alive() and time.monotonic() < deadline:
            if self.failure is not None:  # what is queued (the last checkpoint...) cannot be committed
                self.abandon()
            elif not stop_sent:
                try:
                    self._queue.put(("stop", None), timeout=0.2)
                    stop_sent = True
                except queue.Full:
                    continue
            self._thread.join(0.2)

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")
        if self.cache_bytes:  # negative: a size in KiB, not a count of pages
            conn.execute(f"PRAGMA cache_size=-{max(1, self.cache_bytes // 1024)}")
        self.cache_limit = _cache_limit(conn)
        try:
            while self._drain_once(conn):
                pass
        except BaseException as exc:  # a store failure must be visible, not silent
            self.error = exc
            self.failure = f"the store writer stopped: {type(exc).__name__}: {exc}"
            log.exception("store writer stopped")
        finally:
            conn.close()

    def _drain_once(self, conn: sqlite3.Connection) -> bool:
        """Take what is queued (for up to `commit_every`) and commit it in one transaction.

        A transaction that fails (the disk is full, an I/O error) is rolled back and retried, the
        same items, every `RETRY_EVERY` seconds, until it commits or the writer is abandoned:
        nothing taken from the queue is lost while the flow waits (its queue is full).
        """
        item = self._queue.get()
        deadline = time.monotonic() + self.commit_every
        batch: list[tuple[str, Any]] = []
        while True:
            batch.append(item)
            if item[0] in ("flush", "stop") or time.monotonic() >= deadline:
                break
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
        while not self._commit(conn, batch):
            if self._abandoned.wait(RETRY_EVERY):
                return False
        rows = sum(sum(map(len, body.values())) for kind, body in batch if kind == "rows")
        if rows:
            with self._room:
                self._queued_rows -= rows
                self._room.notify_all()
        if not self._same_file():
            return False
        if self._committed_offsets is not None and time.monotonic() >= self._next_release:
            self._release(conn)
        for kind, body in batch:
            if kind == "flush":
                body.set()
        return batch[-1][0] != "stop"

    def _commit(self, conn: sqlite3.Connection, batch: list[tuple[str, Any]]) -> bool:
        """Write a batch in one transaction; on a write failure roll back, record why, return False."""
        recent = self._recent
        try:
            conn.execute("BEGIN")
            for kind, body in batch:
                if kind == "rows":
                    self._write_rows(conn, body)
                    recent.add(body.get("events", ()))
                elif kind == "checkpoint":
                    self._write_checkpoint(conn, *body)
            recent.write(conn)
            conn.execute("COMMIT")
            if self._bodies is not None:
                self._bodies.written()
        except (sqlite3.OperationalError, OSError) as exc:
            recent.discard()
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            self.write_failures += 1
            if self.failure is None:
                log.error("cannot write the store %s: %s; writes are refused until it can, retrying every %g s",
                          self.path, exc, RETRY_EVERY)
            self.failure = f"cannot write the store: {exc}"
            return False
        self.transactions += 1
        if self.failure is not None:
            log.warning("the store %s is writable again; the writes held back are committed", self.path)
            self.failure = None
        return True

    def _same_file(self) -> bool:
        """Whether the store file is still the one this writer opened; if not, give up loudly."""
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._identity
        except OSError:
            same = False
        if not same:
            self.failure = (f'the store file "{self.path}" was deleted or replaced while running; nothing more '
                            "is written; stop the appliance and restore the file")
            log.error("%s", self.failure)
            self.abandon()
        return same

    def _write_rows(self, conn: sqlite3.Connection, rows: dict[str, list[dict]]) -> None:
        for table, items in rows.items():
            if table == "events":
                self._write_events(conn, items, rows.get("predictions", ()))
            elif table == "predictions":
                continue  # in their events' rows
            elif items:
                columns = list(TABLES[table][0])
                conn.executemany(self._sql[table], [tuple(row.get(c) for c in columns) for row in items])
                self.rows_written += len(items)
        if rows.get("models"):
            self._models_written = True

    def _write_checkpoint(self, conn: sqlite3.Connection, fingerprint: str, payload: dict[str, Any]) -> None:
        if payload["entities"]:
            conn.executemany(self._sql["entity_state"], payload["entities"])
        if payload.get("evicted"):
            conn.executemany("DELETE FROM entity_state WHERE key = ? AND entity = ?", payload["evicted"])
        if "pending" in payload:  # the label join's changes since the last checkpoint: deletes first
            rows, removed = payload["pending"]
            conn.executemany("DELETE FROM pending_labels WHERE event_id = ?", [(event_id,) for event_id in removed])
            conn.executemany(self._sql["pending_labels"], rows)
        conn.execute(self._sql["checkpoint"],
                     (1, fingerprint, orjson.dumps(payload["offsets"]).decode(), payload["engine"], time.time()))
        self._committed_offsets = dict(payload["offsets"])
        watermark = payload.get("watermark")
        if self.retention and watermark is not None and watermark >= self._next_prune:
            self._prune(conn, watermark)
            self._next_prune = watermark + PRUNE_EVERY
        if self.keep_models is not None and self._models_written:
            self.models_thinned += thin_models(conn, self.keep_models, tuple(payload.get("models_kept", ()))).thinned
            self._models_written = False
        if self.max_bytes is not None:
            self._prune_bytes(conn, watermark)

    def _write_events(self, conn: sqlite3.Connection, events: list[dict], predictions: Iterable[dict]) -> None:
        """Each event with its prediction (the engine hands both in one batch) as one row, its payload and
        feature vector as one compressed `body` (`body.BodyCodec`)."""
        by_seq = {row["seq"]: row for row in predictions}
        if self._bodies is None:
            self._bodies = BodyCodec.of_store(conn)
        encode = self._bodies.encode
        out = []
        for event in events:
            seq = event["seq"]
            prediction = by_seq.pop(seq, None)
            if prediction is None:
                out.append((*map(event.get, EVENT_COLUMNS), None, None, None, None, None,
                            encode(event["payload"], None)))
                continue
            score, learner = prediction["score"], prediction["learner_score"]
            if learner == score and type(learner) is type(score) and math.copysign(1.0, learner) == math.copysign(1.0, score):
                learner = None  # the view reads it back as the score: the same float, sign and all
            out.append((*map(event.get, EVENT_COLUMNS), prediction["version"], score, prediction["predicted"], learner,
                        prediction["origin"], encode(event["payload"], prediction["features"])))
        if by_seq:
            raise ApplianceError(f"predictions without their events in one batch (seq {min(by_seq)}): the "
                                 "engine hands an event and its prediction together")
        if self._bodies.unwritten is not None:  # in the transaction of the first body compressed with it
            conn.execute("INSERT OR IGNORE INTO dictionaries (id, data, wall_ts) VALUES (:id, :data, :wall_ts)",
                         self._bodies.unwritten)
        conn.executemany(self._sql["events"], out)
        self.rows_written += 2 * len(out) - sum(row[-2] is None for row in out)

    def _release(self, conn: sqlite3.Connection) -> None:
        """Make the last committed checkpoint durable (a WAL checkpoint syncs the WAL first, even with
        synchronous=NORMAL), then hand its offsets to `after_durable_checkpoint`."""
        self._next_release = time.monotonic() + self.release_every
        offsets, self._committed_offsets = self._committed_offsets, None
        if self.after_durable_checkpoint is None or offsets is None:
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.OperationalError as exc:  # not durable yet: release at a later checkpoint
            log.warning("cannot checkpoint the WAL (%s); input is released later", exc)
            return
        try:
            self.after_durable_checkpoint(offsets)
        except Exception:  # noqa: BLE001 - giving space back is best effort, never a store failure
            log.exception("releasing input already checkpointed failed")

    def _prune(self, conn: sqlite3.Connection, watermark: float) -> None:
        """Delete rows older than each table's retention, in event time (the watermark's clock)."""
        for table, count in prune_by_age(conn, self.retention, watermark).items():
            self.pruned[table] = self.pruned.get(table, 0) + count

    def _prune_bytes(self, conn: sqlite3.Connection, watermark: float | None) -> None:
        """Keep the store's pages in use under `max_bytes` (`retention.prune_to_bytes`)."""
        self.used_bytes = used_bytes(conn)
        if self.used_bytes <= self.max_bytes or watermark is None:
            return
        self.used_bytes, counts = prune_to_bytes(conn, self.max_bytes, watermark)
        for table, count in counts.items():
            self.pruned_for_bytes[table] += count


def _cache_limit(conn: sqlite3.Connection) -> int:
    """The connection's page cache bound in bytes (`PRAGMA cache_size`: pages if positive, KiB if not)."""
    size = conn.execute("PRAGMA cache_size").fetchone()[0]
    return -size * 1024 if size < 0 else size * conn.execute("PRAGMA page_size").fetchone()[0]


def _insert_sql(table: str, columns: list[str]) -> str:
    names = ", ".join(f"[{c}]" for c in columns)
    marks = ", ".join("?" for _ in columns)
    return f"INSERT OR REPLACE INTO [{table}] ({names}) VALUES ({marks})"
