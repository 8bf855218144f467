"""Wiring: config -> store -> engine (restored from its checkpoint) -> dataflow -> socket server.

`Appliance` is what `appliance up` and `appliance replay` run. It owns the threads: the dataflow
(one thread; Bytewax workers inside), the socket server (its own event loop), and the store writer.
Stopping is ordered: the server stops accepting and answers what it already received, the inputs
end (the inbox is drained first), the engine writes a final checkpoint, the writer commits.
"""

from __future__ import annotations

import gc
import hashlib
import sys
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import attributes
from .config import Config
from .engine import Engine
from .errors import ConfigError
from .events import decode
from .inbox import Inbox
from .entity_history import index_entity_keys
from .order_log import OrderLog
from .service import Service, StatsBoard
from .sources import read_source, resolve_source
from .store import StoreWriter, load_checkpoint, load_entities, load_pending, open_db
from .timeutil import parse_timestamp

log = logging.getLogger(__name__)


def fingerprint(config: Config) -> str:
    """Return a digest of what entity state and models depend on: schema, features, model."""
    text = repr((config.event, config.features, config.model.task, config.model.spec))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_attribute_files(config: Config, db: Any) -> list[tuple[str, int, bool]]:
    """Copy each declared attribute CSV into the store as a new version if its content changed.

    Returns (table, version, changed) per table. A missing file is only an error when the store
    holds no version of that table yet; otherwise the stored version goes on serving.
    """
    loaded = []
    for spec in config.features.attributes:
        try:
            version, changed = attributes.load_csv(db, spec, spec.path, now=time.time())
        except ConfigError:
            latest = attributes.latest_version(db, spec.name)
            if latest is None or Path(spec.path).exists():
                raise
            log.warning('attributes "%s": "%s" is gone; serving stored version %d', spec.name, spec.path,
                        latest["version"])
            version, changed = latest["version"], False
        loaded.append((spec.name, version, changed))
    return loaded


def store_files(db_path: str) -> list[Path]:
    """Return the files that make up a store: the database, its WAL, the inbox log and the order log."""
    return [Path(db_path + suffix) for suffix in ("", "-wal", "-shm", "-inbox", "-order")]


@dataclass
class RunOptions:
    """How to run: which inputs, whether to serve, how many Bytewax workers."""

    serve: bool = True
    read_source: bool = True
    fresh: bool = False
    workers: int = 1
    tcp: tuple[str, int] | None = None
    token: str | None = None
    on_ready: Callable[[], None] | None = None
    on_tick: Callable[[Appliance], None] | None = None
    metrics_port: int | None = None  # serve Prometheus text on 127.0.0.1:PORT/metrics


class Appliance:
    """One appliance: prepared by `open`, run by `run`, stopped by `stop`."""

    def __init__(self, config: Config, options: RunOptions) -> None:
        self.config = config
        self.options = options
        self.stop_event = threading.Event()
        self.board = StatsBoard()
        self.server = None
        self.error: BaseException | None = None
        self.resumed = False
        self.imported: list[int] = []  # versions registered at start from staged imports
        if options.fresh:
            for path in store_files(config.db):
                path.unlink(missing_ok=True)
        self.source = resolve_source(config.source) if options.read_source else None
        self.engine = self._restore_engine()
        self.writer = StoreWriter(config.db, retention=config.retention.as_dict())

    def _restore_engine(self) -> Engine:
        engine = Engine(self.config)
        db = open_db(self.config.db)
        try:
            saved = load_checkpoint(db)
            if saved is not None:
                if saved["fingerprint"] != fingerprint(self.config):
                    raise ConfigError(
                        f'the store "{self.config.db}" was built with other features or another model; '
                        "start with --fresh or use another --db"
                    )
                engine.restore(saved["engine"], load_entities(db), load_pending(db))
                engine.load_recent_audit(db)  # the trail as the store holds it, not this start's
                self.resumed = True
            index_entity_keys(db.conn, tuple(engine.space.layouts))
            load_attribute_files(self.config, db)
            engine.attach_attributes(db)
            self.imported = engine.import_models(db)
        finally:
            db.conn.close()
        return engine

    def _inputs(self) -> list:
        from dataflows.sources import InboxInput, ReplayInput

        inputs: list = []
        offsets = self.engine.offsets
        if self.source is not None:
            spec, schema, task = self.source, self.config.event, self.engine.task
            start = int(offsets.get(spec, 0))
            self.board.source = {"spec": spec, "ended_at": None}
            inputs.append(ReplayInput(spec, lambda: read_source(spec, schema, task, start),
                                      speed=self.config.speed, event_time=self._event_time,
                                      on_end=self.board.source_ended))
        if self.options.serve:
            inputs.append(InboxInput("inbox", self.config.db + "-inbox", int(offsets.get("inbox", 0))))
        return inputs

    def _event_time(self, payload: Any) -> float | None:
        try:
            return parse_timestamp(decode(payload).get(self.config.event.time_field))
        except Exception:  # pacing only; the parse step reports bad events properly
            return None

    def start_server(self) -> None:
        """Open the inbox and start answering on the socket."""
        from .protocol import Protocol
        from .server import SocketServer

        inbox = Inbox(self.config.db + "-inbox")
        service = Service(self.engine, inbox, self.board)
        service.flow_alive = lambda: self._flow_thread is not None and self._flow_thread.is_alive()
        server = SocketServer(Protocol(service.handlers()), unix_path=self.config.socket,
                              tcp=self.options.tcp, token=self.options.token, watch_source=lambda: service.stats({}))
        service.server_stats = server.stats
        service.store_stats = self.writer.stats
        server.start()
        self.server, self.inbox, self.service = server, inbox, service
        if self.options.metrics_port is not None:
            from . import prometheus

            try:
                self.metrics_http = prometheus.serve(self.options.metrics_port, lambda: service.stats({}))
            except OSError as exc:
                server.stop()
                raise ConfigError(f"cannot serve metrics on 127.0.0.1:{self.options.metrics_port}: "
                                  f"{exc.strerror or exc}") from None

    def run(self) -> None:
        """Run until the inputs end (replay) or `stop` is called (serving); re-raise flow errors."""
        from bytewax.run import cli_main

        from dataflows.appliance_flow import build_flow
        from dataflows.sinks import StoreSink
        from dataflows.sources import ApplianceSource

        self.board.publish(self.engine, force=True)
        if self.options.serve:
            _tune_for_serving()
        self.writer.start()
        self._commit_start()
        self._flow_thread = None
        if self.options.serve:
            self.start_server()
        inputs = self._inputs()
        self.order_log = OrderLog(self.config.db + "-order", self.engine.offsets, [i.name for i in inputs])
        self.writer.after_durable_checkpoint = self._released
        flow = build_flow(ApplianceSource(inputs, self.stop_event), StoreSink(self.writer), self.engine,
                          fingerprint=fingerprint(self.config), checkpoint_seconds=self.config.checkpoint_seconds,
                          after_batch=self.board.publish, order_log=self.order_log)

        def run_flow() -> None:
            try:
                cli_main(flow, workers_per_process=self.options.workers)
            except BaseException as exc:  # surfaced by run() on the main thread
                self.error = exc
                self.stop_event.set()

        self._flow_thread = threading.Thread(target=run_flow, name="dataflow", daemon=True)
        self._flow_thread.start()
        if self.options.on_ready is not None:
            self.options.on_ready()
        try:
            while self._flow_thread.is_alive():
                self._flow_thread.join(0.2)
                if self.options.on_tick is not None:
                    self.options.on_tick(self)
        finally:
            self._shutdown()
        if self.error is not None:
            raise self.error

    def _commit_start(self) -> None:
        """Write the imports the start registered (staged while the appliance was stopped) with a
        checkpoint that records them as done, without waiting for an event that may never come.

        The rows are keyed (model version, audit id), so if the process dies before the checkpoint
        commits, the next start registers the same imports under the same keys again.
        """
        if not self.imported:  # nothing else waits for a start checkpoint: the first batch carries it
            return
        self.writer.put_rows(self.engine.take_rows())
        self.writer.put_checkpoint(fingerprint(self.config), self.engine.checkpoint())

    def _released(self, offsets: dict[str, int]) -> None:
        """A checkpoint with these offsets is durable: what lies before them may be given back."""
        self.order_log.release(offsets)
        if self.server is not None:
            self.inbox.release(int(offsets.get("inbox", 0)))

    def stop(self) -> None:
        """Ask the appliance to stop; `run` returns once everything is flushed."""
        if self.server is not None:
            self.server.stop()
        self.stop_event.set()

    def _shutdown(self) -> None:
        self.stop_event.set()
        if self.server is not None:
            self.server.stop()
            self.inbox.close()
            self.service.history.close()
        if getattr(self, "metrics_http", None) is not None:
            self.metrics_http.shutdown()
            self.metrics_http.server_close()
        self.writer.close()
        if getattr(self, "order_log", None) is not None:
            self.order_log.close()
        self.board.publish(self.engine, force=True)
        if self.writer.error is not None and self.error is None:
            self.error = self.writer.error

    def flow_running(self) -> bool:
        thread = getattr(self, "_flow_thread", None)
        return thread is not None and thread.is_alive()


SWITCH_INTERVAL = 0.0005  # seconds a thread may hold the GIL while the socket thread waits for it


def _tune_for_serving() -> None:
    """Keep the socket thread's waits short while the dataflow and the store writer run.

    The server answers from its own thread; with the default 5 ms GIL switch interval a request
    can wait that long behind a busy dataflow thread. Objects alive at start (the restored model
    and state) are moved out of the collector's sight, and young-generation collections are made
    rarer, so full collections do not stall requests.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
