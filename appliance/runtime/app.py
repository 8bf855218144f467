"""Wiring: config -> store -> engine (restored from its checkpoint) -> dataflow -> socket server.

`Appliance` is what `appliance up` and `appliance replay` run. It owns the threads: the dataflow
(one thread running one Bytewax worker; with `workers` N >= 2, N processes beside it keep the entity
state, `engine.partitions`), the socket server (its own event loop), and the store writer.
Stopping is ordered: the server stops accepting and answers what it already received, the inputs
end (the inbox is drained first), the engine writes a final checkpoint, the writer commits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.config.file import Config
from appliance.engine.core import Engine
from appliance.engine.items import ItemRef
from appliance.engine.partitions import EntityPartitions
from appliance.errors import ConfigError, FlowFailed
from appliance.features.entity_codec import encode_state
from appliance.ingest.events import decode
from appliance.ingest.inbox import InboxSpace
from appliance.ingest.order_log import OrderLog
from appliance.ingest.readers import read_source, resolve_source
from appliance.processes import collector_settled
from appliance.runtime.fleet import ServingFleet
from appliance.runtime.store_files import child_inboxes, fingerprint, load_attribute_files, store_files, warn_zeroing
from appliance.runtime.supervision import MAX_RESTARTS, FlowSupervisor, describe
from appliance.serving.availability import Availability, GuardedInbox, Outage
from appliance.serving.board import StatsBoard
from appliance.serving.service import Service
from appliance.storage.disk import DiskGauge, default_max_bytes
from appliance.storage.ownership import StoreLock, make_private
from appliance.storage.store import load_checkpoint, load_entities, load_pending, open_db
from appliance.storage.writer import StoreWriter
from appliance.storage.writer_process import WriterProcess
from appliance.timeutil import parse_timestamp

if TYPE_CHECKING:
    from appliance.runtime.interpreters import SpareChildren

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """How to run: which inputs, whether to serve, how many processes keep the entity state."""

    serve: bool = True
    read_source: bool = True
    fresh: bool = False
    workers: int = 1  # N >= 2: entity state in N worker processes (`engine.partitions`); 1: in the engine
    tcp: tuple[str, int] | None = None
    token: str | None = None
    auth_timeout: float = 5.0  # seconds a TCP connection has to authenticate
    on_ready: Callable[[], None] | None = None
    on_tick: Callable[[Appliance], None] | None = None
    metrics_port: int | None = None  # serve Prometheus text on 127.0.0.1:PORT/metrics
    serve_processes: int = 1  # processes accepting on the socket: 1 this one, N > 1 serving children (runtime.serving_processes)
    restarts: int = MAX_RESTARTS  # restarts of a failed flow allowed within 10 minutes (runtime.supervision)
    writer_process: bool = True  # the store writer in its own process (storage.writer_process), else a thread
    # The process is the appliance's own (the CLI's `up` and `replay`): freeze what the start built out
    # of the cycle collector's sight and make its collections rarer while `run` runs (`processes.collector_settled`).
    # Off for an embedding, whose collector is its own.
    own_process: bool = False
    # Serving children's interpreters started ahead (`appliance up` starts them before it imports this
    # module): taken by the children instead of starting new ones; the caller closes what is left.
    spare_children: SpareChildren | None = None


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
        self.fleet: ServingFleet | None = None  # the serving children's side, while they serve
        self.child_inboxes: dict[str, str] = {}  # the flow's input name -> a serving child's inbox it reads
        self.child_spaces: dict[str, InboxSpace] = {}  # the same inboxes' disk space, given back as the primary's
        self.supervisor = FlowSupervisor(options.restarts)
        self.restarting: str | None = None  # why, while a failed flow is being restarted
        self.disk = DiskGauge(config.db, reserve=config.retention.disk_reserve)
        self.availability = self._watch_stages()
        self.lock = StoreLock(config.db)  # before anything of the store is unlinked or written
        try:
            if options.fresh:
                for path in store_files(config.db):
                    path.unlink(missing_ok=True)
            for path in store_files(config.db):
                if path.exists():
                    make_private(path)
            self.source = resolve_source(config.source) if options.read_source else None
            self.engine = self._restore_engine()
            self._writer_options = dict(retention=config.retention.as_dict(),
                                        max_bytes=config.retention.max_bytes or default_max_bytes(config.db),
                                        keep_models=config.retention.keep_models, cache_bytes=config.store_cache,
                                        entity_keys=tuple(self.engine.space.layouts))
            writer = WriterProcess if options.writer_process else StoreWriter
            self.writer = writer(config.db, **self._writer_options)
            self.disk.sample()
        except BaseException:
            self.lock.release()
            raise

    def _watch_stages(self) -> Availability:
        """What refuses writes: the store writer failing, the order log failing, the dataflow stopped."""
        availability = Availability()

        def store() -> Outage | None:
            failure = self.writer.failure
            return None if failure is None else Outage("store", failure)

        def order_log() -> Outage | None:
            failure = getattr(getattr(self, "order_log", None), "failure", None)
            return None if failure is None else Outage("order log", failure)

        def flow() -> Outage | None:
            restarting = self.restarting
            if restarting is not None:
                return Outage("dataflow", f"the dataflow failed ({restarting}) and is restarting from its checkpoint")
            thread = getattr(self, "_flow_thread", None)
            if thread is None or thread.is_alive() or self.stop_event.is_set():
                return None
            return Outage("dataflow", "the dataflow has stopped; see the appliance's log")

        gauge = self.disk

        def disk() -> Outage | None:  # asked per write: one attribute read
            reason = gauge.refusing
            return None if reason is None else Outage("disk", reason, "disk_low")

        for check in (store, order_log, flow, disk):
            availability.watch(check)
        return availability

    def failure(self) -> str | None:
        """Why the last state could not be saved (a full disk...), or None."""
        for found in (self.writer.failure, getattr(getattr(self, "order_log", None), "failure", None)):
            if found is not None:
                return found
        return None

    def stop_message(self) -> str:
        """What `up` says once stopped: cleanly, or why the last state could not be saved."""
        failure = self.failure()
        latched = self.availability.latched
        if failure is None and latched is not None:
            return f"stopped; writes were refused since {latched.stage} went down: {latched.reason}"
        if failure is None:
            return "stopped cleanly"
        return (f"stopped, but the last state could not be saved ({failure}); everything acknowledged is in the "
                "inbox: the next start redoes the work since the last checkpoint")

    def _restore_engine(self, restart: bool = False) -> Engine:
        """A new engine from the store's last committed checkpoint; at start, the attribute files
        are read into the store first (a restart of the flow attaches what the start loaded)."""
        if not restart:
            warn_zeroing(self.config)
        engine = Engine(self.config)
        db = open_db(self.config.db)
        try:
            saved = load_checkpoint(db)
            if saved is not None:
                if saved["fingerprint"] != fingerprint(self.config):
                    raise ConfigError(
                        f'the store "{self.config.db}" was built with other features, another model, '
                        "another categorical hash or another on-disk format; "
                        "start with --fresh or use another --db"
                    )
                engine.restore(saved["engine"], load_entities(db), load_pending(db))
                engine.load_recent_audit(db)  # the trail as the store holds it, not this start's
                self.resumed = True
            if not restart:
                load_attribute_files(self.config, db)
            engine.attach_attributes(db)
            self.imported = engine.commands.import_models(db)
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
            paths = {str(p) for p in child_inboxes(self.config.db)}
            paths |= {f"{self.config.db}-inbox-{n}" for n in range(1, self.options.serve_processes + 1)}
            for path in sorted(paths, key=lambda p: int(p.rsplit("-", 1)[-1])):
                name = "inbox-" + path.rsplit("-", 1)[-1]  # the flow's offsets are per input name
                inputs.append(InboxInput(name, path, int(offsets.get(name, 0))))
                self.child_inboxes[name] = path
                self.child_spaces[name] = InboxSpace(path)
        return inputs

    def _event_time(self, payload: Any) -> float | None:
        try:
            return parse_timestamp(decode(payload).get(self.config.event.time_field))
        except Exception:  # pacing only; the parse step reports bad events properly
            return None

    def start_server(self, *, accepting: bool = True) -> None:
        """Open the inbox and start answering on the socket (without `accepting`, on its private
        socket only until `ServingFleet.route_connections` says otherwise: serving children take the public one)."""
        from appliance.serving.protocol import Protocol
        from appliance.serving.server import SocketServer

        inbox = GuardedInbox(self.config.db + "-inbox", self.availability)
        service = Service(self.engine, inbox, self.board)
        service.flow_alive = lambda: self._flow_thread is not None and self._flow_thread.is_alive()
        service.outage = self.availability.outage
        server = SocketServer(Protocol(service.handlers()), unix_path=self.config.socket,
                              tcp=self.options.tcp, token=self.options.token, auth_timeout=self.options.auth_timeout,
                              watch_source=lambda: service.stats({}))
        service.server_stats = server.stats
        service.store_stats = self.writer.stats
        service.disk_stats = self.disk.stats
        server.start(accepting=accepting)
        self.server, self.inbox, self.service = server, inbox, service
        if self.options.metrics_port is not None:
            from appliance.serving import prometheus

            try:
                self.metrics_http = prometheus.serve(self.options.metrics_port, lambda: service.stats({}))
            except OSError as exc:
                server.stop()
                raise ConfigError(f"cannot serve metrics on 127.0.0.1:{self.options.metrics_port}: "
                                  f"{exc.strerror or exc}") from None

    def run(self) -> None:
        """Run until the inputs end (replay) or `stop` is called (serving). A flow that fails is
        restarted from its checkpoint within the restart budget (`runtime.supervision`); the error
        that ends it for good is raised."""
        self.board.publish(self.engine, force=True)
        if self.options.serve:
            _tune_for_serving()
        self.writer.start()
        self._commit_start()
        self._flow_thread = None
        if self.options.serve and self.options.serve_processes > 1:
            self.fleet = ServingFleet(self.config, self.options.serve_processes, self.availability,
                                      lambda: self.engine.offsets, token=self.options.token,
                                      auth_timeout=self.options.auth_timeout, spares=self.options.spare_children)
            self.fleet.open_online(self.engine)  # read only by the children
        if self.options.serve:
            self.start_server(accepting=self.fleet is None)
            self.service.children_lag = self._children_lag
            self.service.flow_stats = self.supervisor.stats
        if self.fleet is not None:
            self.fleet.start(self.service, self.server)
        self.writer.after_durable_checkpoint = self._released
        settled = collector_settled() if self.options.own_process else contextlib.nullcontext()
        try:
            with settled:
                self._start_flow()
                if self.options.on_ready is not None:
                    self.options.on_ready()
                while True:
                    self._wait_for_flow()
                    if self.error is None or self.stop_event.is_set() or not self._restart_flow():
                        break
        finally:
            self._shutdown()
        if self.error is not None:
            raise self.error

    def _start_flow(self) -> None:
        """Build the dataflow over the inputs from the engine's offsets and run it on its own thread."""
        self.writer.wait_ready()  # the store writer's process holds the store before anything is written to it
        from bytewax.run import cli_main

        from dataflows.appliance_flow import build_flow
        from dataflows.sinks import StoreSink
        from dataflows.sources import Abort, ApplianceSource

        inputs = self._inputs()
        self.order_log = OrderLog(self.config.db + "-order", self.engine.offsets, [i.name for i in inputs])
        self.order_log.give_up = self.stop_event  # a failing append is retried until the appliance stops
        self.failed_item: ItemRef | None = None
        self.abort = Abort()
        self.partitions = partitions = self._entity_partitions()
        flow = build_flow(ApplianceSource(inputs, self.stop_event, self.abort), StoreSink(self.writer), self.engine,
                          fingerprint=fingerprint(self.config), checkpoint_seconds=self.config.checkpoint_seconds,
                          after_batch=self._after_batch, order_log=self.order_log,
                          poisoned=self.supervisor.poisoned, on_failure=self._engine_failed, partitions=partitions)

        def run_flow() -> None:
            try:
                # One Bytewax worker: a second one (a thread) only contends for the lock (docs/benchmarks.md)
                cli_main(flow, workers_per_process=1)
            except BaseException as exc:  # the supervisor decides, on the main thread
                self.error = exc
            finally:
                if partitions is not None:
                    partitions.close()

        self.error = None
        self._flow_thread = threading.Thread(target=run_flow, name="dataflow", daemon=True)
        self._flow_thread.start()

    def _entity_partitions(self) -> EntityPartitions | None:
        """With 2 workers or more, entity state is kept by as many worker processes (`engine.partitions`),
        started for this flow and loaded with the engine's (restored) entity states."""
        engine = self.engine
        if self.options.workers < 2:
            engine.partitioned = False
            return None
        partitions = EntityPartitions(self.config, engine.space, self.options.workers)
        partitions.load([(key, entity, encode_state(state)) for key, entity, state in engine.space.iter_states(engine.entities)],
                        engine.sweep_ticks)
        engine.partitioned = True
        return partitions

    def _engine_failed(self, item: ItemRef, _error: BaseException) -> None:
        self.failed_item = item  # on the flow's thread, before the flow ends

    def _replace_writer(self) -> None:
        """A new store writer process for the one that died: the next flow starts from the last checkpoint
        it committed, so what the dead one held uncommitted is redone."""
        log.warning("starting a new store writer process")
        self.writer.close()  # gone already: releases what it holds of the store (its link, the file it pinned)
        self.writer = WriterProcess(self.config.db, **self._writer_options).start()
        self.writer.after_durable_checkpoint = self._released
        if self.server is not None:
            self.service.store_stats = self.writer.stats

    def _wait_for_flow(self) -> None:
        while self._flow_thread.is_alive():
            self._flow_thread.join(0.2)
            self._tick()

    def _tick(self) -> None:
        self._check_stages()
        if self.options.on_tick is not None:
            self.options.on_tick(self)

    def _restart_flow(self) -> bool:
        """After the flow failed: wait as the supervisor says, let the writer commit what the dead flow
        emitted, restore a new engine from the last committed checkpoint, start a new flow from its
        offsets. Returns False (the error stands) when the budget is spent or the store cannot commit."""
        error = self.error
        assert error is not None
        decision = self.supervisor.failed(error, self.failed_item)
        log.error("the dataflow failed: %s", describe(error), exc_info=error)
        if not decision.restart:
            self.error = FlowFailed(decision.reason)
            return False
        self.restarting = describe(error)
        self.availability.outage()  # the children refuse writes as this process does, from now on
        self.order_log.close()
        log.warning("restarting the dataflow from its checkpoint%s (restart %d)",
                    f" in {decision.delay:.0f} s" if decision.delay else "", self.supervisor.restarts)
        deadline = time.monotonic() + decision.delay
        while time.monotonic() < deadline and not self.stop_event.is_set():
            self.stop_event.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            self._tick()
        if self.writer.lost and not self.stop_event.is_set():
            self._replace_writer()
        if self.stop_event.is_set() or not self.writer.flush() or self.writer.failure is not None:
            return False
        self.engine = self._restore_engine(restart=True)
        self.supervisor.resumed({name: int(offset) for name, offset in self.engine.offsets.items()})
        if self.server is not None:
            self.service.attach(self.engine)
        if self.fleet is not None:
            self.fleet.open_online(self.engine)
        self._commit_start()
        self.board.publish(self.engine, force=True)
        self._start_flow()
        self.restarting = None
        log.warning("the dataflow runs again from its checkpoint (offsets %s)", dict(self.engine.offsets) or "none: the start")
        return True

    def _children_lag(self) -> dict[str, int]:
        """Bytes the flow is behind in each serving child's inbox it reads (on any thread)."""
        offsets = self.engine.offsets
        lag = {}
        for name, path in list(self.child_inboxes.items()):
            try:
                lag[name] = max(0, os.stat(path).st_size - int(offsets.get(name, 0)))
            except OSError:
                lag[name] = 0
        return lag

    def _after_batch(self, engine: Engine, force: bool) -> bool:
        """After each engine batch (on the flow's thread): the online store, then the stats board."""
        if self.fleet is not None:
            self.fleet.publish_online()
        return self.board.publish(engine, force)

    def _check_stages(self) -> None:
        """Between two ticks: the inbox still the file it was; a stop gives up on a failing store; a
        store writer process that died ends the flow, to be restarted with a new one."""
        self.disk.sample()
        if (self.writer.lost and self.flow_running() and not self.stop_event.is_set()
                and not self.abort.is_set()):
            self.abort.set(str(self.writer.failure))
        if self.server is not None:
            self.inbox.verify()
        if self.fleet is not None and not self.stop_event.is_set():
            self.fleet.tick()
        if self.stop_event.is_set() and self.writer.failure is not None:
            self.writer.abandon()  # the flow may be waiting for room in the writer's queue

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
        for name, space in self.child_spaces.items():  # the serving children's, by the same checkpoint
            space.release(int(offsets.get(name, 0)))

    def stop(self) -> None:
        """Ask the appliance to stop; `run` returns once everything is flushed."""
        if self.fleet is not None:
            self.fleet.stop()
        if self.server is not None:
            self.server.stop()
        self.stop_event.set()

    def _shutdown(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        self.stop_event.set()
        if self.server is not None:
            self.server.stop()
            self.inbox.close()
            self.service.history.close()
        if getattr(self, "metrics_http", None) is not None:
            self.metrics_http.shutdown()
            self.metrics_http.server_close()
        self.writer.close()
        if self.fleet is not None:
            self.fleet.close()
        if getattr(self, "order_log", None) is not None:
            self.order_log.close()
        self.board.publish(self.engine, force=True)
        if self.writer.error is not None and self.error is None:
            self.error = self.writer.error
        self.lock.release()

    def flow_running(self) -> bool:
        thread = getattr(self, "_flow_thread", None)
        return thread is not None and thread.is_alive()


SWITCH_INTERVAL = 0.0005  # seconds a thread may hold the GIL while the socket thread waits for it


def _tune_for_serving() -> None:
    """Keep the socket thread's waits short while the dataflow and the store writer run.

    The server answers from its own thread; with the default 5 ms GIL switch interval a request
    can wait that long behind a busy dataflow thread.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)
