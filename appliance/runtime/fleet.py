"""The primary's side of its serving children (`--serve-processes N`, N > 1).

The children answer `predict`, `ingest` and `label` from the online store and relay every other op
to the primary's private socket (`appliance.serving.child`). What the primary keeps for them, and
which of its threads writes it:

    online store     `engine.online.OnlinePublisher`     the flow's thread, after each batch (`publish_online`)
    status record    `serving.status_record`             any thread, under one lock: the outage refusing
                                                         writes, the flow's offsets in the children's inboxes
    private socket   `serving.server.SocketServer`       its own thread: the ops the children relay
    the children     `runtime.serving_processes`         the main thread: started, restarted, stopped

`runtime.app.Appliance` makes one when it serves with children; the rest of the appliance (the flow,
the store writer, the primary's public socket) does not change with it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from appliance.config.file import Config
from appliance.serving.access import FAILED_AUTHS_PER_SECOND, FailedAuthBudget
from appliance.serving.availability import Availability

if TYPE_CHECKING:
    from appliance.engine.core import Engine
    from appliance.engine.online import OnlinePublisher
    from appliance.runtime.interpreters import SpareChildren
    from appliance.runtime.serving_processes import ServingChildren
    from appliance.serving.server import SocketServer
    from appliance.serving.service import Service
    from appliance.serving.status_record import PeerLatencies, StatusWriter

log = logging.getLogger(__name__)


class ServingFleet:
    """`count` serving children beside the primary, and what they read of it."""

    def __init__(self, config: Config, count: int, availability: Availability,
                 offsets: Callable[[], Mapping[str, int]], *, token: str | None, auth_timeout: float,
                 spares: SpareChildren | None = None) -> None:
        self.config = config
        self.count = count
        self.availability = availability
        self.offsets = offsets  # the running engine's input offsets (a restarted flow's engine is another)
        self.token = token
        self.auth_timeout = auth_timeout
        self.spares = spares
        self.online: OnlinePublisher | None = None
        self.online_failure: str | None = None  # why the last publication of a batch failed, until one succeeds
        self.children: ServingChildren | None = None
        self.private_server: SocketServer | None = None
        self.serving_status: StatusWriter | None = None
        self.peer_latencies: PeerLatencies | None = None
        self._server: SocketServer | None = None  # the primary's public socket, once started
        self._status_lock = threading.Lock()  # the status record: asked and written together

    def open_online(self, engine: Engine) -> None:
        """The online store rebuilt from `engine` (restored from the checkpoint, so the two agree);
        a restarted flow's engine reuses the store's writer."""
        from appliance.engine.online import OnlinePublisher
        from appliance.storage.online_store import OnlineWriter, online_path

        writer = self.online.writer if self.online is not None else OnlineWriter(online_path(self.config.db))
        publisher = OnlinePublisher(writer, engine)
        publisher.rebuild()
        self.online = publisher

    def publish_online(self) -> None:
        """After each engine batch (on the flow's thread): the entity states it changed, in one transaction."""
        import lmdb

        assert self.online is not None
        try:
            self.online.publish()
        except lmdb.Error as exc:  # kept for the next batch; replicas serve the last whole batch
            if self.online_failure is None:
                log.warning("cannot write the online store (%s); retried after each batch", exc)
            self.online_failure = str(exc)
        else:
            self.online_failure = None

    def start(self, service: Service, server: SocketServer) -> None:
        """The status record and the private socket the children forward to (owner-only), then the
        children themselves on `server`'s listening sockets; `service` answers what they relay."""
        from appliance.runtime.serving_processes import ServingChildren
        from appliance.serving.protocol import Protocol
        from appliance.serving.server import SocketServer
        from appliance.serving.status_record import PeerLatencies, StatusWriter, status_path

        self.serving_status = StatusWriter(status_path(self.config.db))
        self.publish_status()  # before any child reads it
        # An outage seen beginning or ending (a refused write, a `health`) reaches the children before the
        # reply does: a client that saw this process refuse or recover finds every child agreeing.
        self.availability.on_change = lambda _outage: self.publish_status()
        self.peer_latencies = PeerLatencies(self.config.db)
        self.peer_latencies.clear()  # an earlier start's children's
        service.peer_latencies = self.peer_latencies.read
        private = SocketServer(Protocol(service.handlers()), unix_path=self.config.socket + ".p",
                               watch_source=lambda: service.stats({}))
        private.start()
        self.private_server = private
        service.server_stats = lambda: _with_relayed_watchers(server.stats(), private.stats())
        assert server.unix_fd is not None and private.unix_path is not None
        self.children = ServingChildren(self.config, self.count, server.unix_fd, private.unix_path,
                                        tcp_fd=server.tcp_fd, token=self.token, auth_timeout=self.auth_timeout,
                                        spares=self.spares)
        # Each process takes its share of the failed-authentication budget: N of them guess no faster than one.
        server.failed_auths = FailedAuthBudget(FAILED_AUTHS_PER_SECOND / self.children.serving_processes)
        self.children.start()
        self._server = server
        self.route_connections()
        children = self.children
        service.serving_pids = lambda: [os.getpid(), *children.pids()]

    def route_connections(self) -> None:
        """Client connections go to the serving children; the primary accepts them only while no
        child runs. A predict there would wait for the flow's thread (one interpreter lock): measured,
        its p99 while ingesting was 0.8-5 ms against 0.1-0.25 ms in a child (docs/benchmarks.md)."""
        assert self.children is not None and self._server is not None
        self._server.set_accepting(not self.children.running())

    def publish_status(self) -> None:
        """What the children refuse by: the outage refusing writes now, the flow's offsets in their inboxes.

        Any thread; asked and written under one lock, so the last record written is the newest asked."""
        from appliance.serving.status_record import ServingStatus

        assert self.serving_status is not None
        with self._status_lock:
            offsets = {name: int(offset) for name, offset in dict(self.offsets()).items()
                       if name.startswith("inbox-")}
            self.serving_status.publish(ServingStatus(self.availability.current(), offsets))

    def tick(self) -> None:
        """From the primary's main loop: the status record refreshed, a child that exited restarted,
        the public socket accepted on by the primary only while no child runs."""
        if self.children is None:
            return
        self.publish_status()
        self.children.check()
        self.route_connections()

    def stop(self) -> None:
        """The children first (what they accepted is in their inboxes before the inputs end), then the
        private socket."""
        if self.children is not None:
            self.children.stop()
        if self.private_server is not None:
            self.private_server.stop()

    def close(self) -> None:
        """Once the flow has ended: the online store's writer and the status records."""
        if self.online is not None:
            self.online.writer.close()
        if self.serving_status is not None:
            self.serving_status.close()
        if self.peer_latencies is not None:
            self.peer_latencies.close()


def _with_relayed_watchers(public: dict[str, int], private: dict[str, int]) -> dict[str, int]:
    """The public socket's counters (the children's are added by `Service.stats`) with the watchers
    the children relay to the private socket, where the pushing happens."""
    for name in ("watchers", "watch_updates_pushed", "watch_updates_dropped"):
        public[name] += private[name]
    return public
