"""The socket transport: newline-delimited JSON over a Unix socket (and optionally loopback TCP).

One asyncio event loop (uvloop when installed) runs in its own thread. Each connection is an
`asyncio.Protocol` (`appliance.serving.connection`) that answers each complete line synchronously
and writes every reply of a chunk in one `write`. There is no per-request task, queue or lock: a
request is answered on the loop thread from state the engine publishes by swapping references.
The server binds the listeners, owns what all connections share, and pushes watchers' updates.

Privacy: the Unix socket is created owner-only (bound under umask 0o177, so it is never visible
with wider permissions); TCP sessions start unauthenticated when a token is set, and binding a
non-loopback address without a token is refused; `appliance.serving.access` says what a token must be.

Pushed updates: after `{"op": "watch", "interval": 1}` a connection gets a stats line every
`interval` seconds (built once per tick for all watchers) until `unwatch` or close. Each update is
a whole snapshot, so a watcher that does not keep up loses nothing by skipping one: while more
than `WATCH_BUFFER` bytes wait in its write buffer, its updates are dropped (counted, and the next
one it gets says how many), never queued. A slow or frozen dashboard costs the appliance nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import ipaddress
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from typing import Any

import orjson

from appliance.errors import ConfigError
from appliance.serving.access import AUTH_TIMEOUT, FailedAuthBudget, check_token
from appliance.serving.connection import Connection
from appliance.serving.event_loop import new_event_loop
from appliance.serving.protocol import Protocol, Session

log = logging.getLogger(__name__)

__all__ = ["SocketServer"]

WATCH_BUFFER = 64 << 10  # bytes waiting for a watcher past which its updates are dropped
WATCH_TICK = 0.05  # seconds between two checks for due updates
MAX_UNIX_PATH = 104


class SocketServer:
    """Serve a `Protocol` on a Unix socket and/or loopback TCP from one event-loop thread.

    Args:
        protocol: Answers request lines.
        unix_path: Where to create the Unix socket (owner-only); None for none.
        tcp: (host, port) to listen on as well; port 0 picks a free one (see `tcp_address`).
        token: Required from TCP clients (`{"op": "auth", "token": ...}` or a `token` field); at least
            `MIN_TOKEN_LENGTH` characters.
        max_connections: Unix-socket connections beyond this are closed right after accept.
        max_tcp_connections: The same for TCP, counted apart: TCP clients never take the Unix socket's room.
        auth_timeout: Seconds a TCP connection has to authenticate before it is closed.
        watch_source: Returns the stats pushed to watchers (called on the loop thread, once per
            tick with a watcher due); None refuses `watch` requests' updates (none are sent).
    """

    def __init__(self, protocol: Protocol, *, unix_path: str | None, tcp: tuple[str, int] | None = None,
                 token: str | None = None, max_connections: int = 1024, max_tcp_connections: int = 256,
                 auth_timeout: float = AUTH_TIMEOUT, watch_source: Callable[[], dict] | None = None) -> None:
        if unix_path is None and tcp is None:
            raise ConfigError("the server needs a Unix socket path or a TCP address")
        if token is not None:
            check_token(token)
        if not auth_timeout > 0:
            raise ConfigError(f"the authentication timeout must be positive seconds, not {auth_timeout}")
        if tcp is not None and token is None and not _is_loopback(tcp[0]):
            raise ConfigError(f"refusing to listen on {tcp[0]}:{tcp[1]} without a token: it is not a loopback "
                              "address; pass --token-file (or APPLIANCE_TOKEN) or bind 127.0.0.1")
        self.protocol = protocol
        self.unix_path = unix_path
        self.tcp = tcp
        self.token = token
        self.max_connections = max_connections
        self.limits = {"unix": max_connections, "tcp": max_tcp_connections}
        self.open_by_listener = {"unix": 0, "tcp": 0}
        self.auth_timeout = auth_timeout
        self.auth_timeouts = 0  # connections closed for not authenticating in time
        self.auth_closed = 0  # connections closed after MAX_FAILED_AUTHS failures
        self.failed_auths = FailedAuthBudget()
        self.tcp_address: tuple[str, int] | None = None
        self.unix_fd: int | None = None
        self.tcp_fd: int | None = None
        self.connections: set[Connection] = set()
        self.watchers: set[Connection] = set()
        self.watch_source = watch_source
        self.watch_pushed = 0
        self.watch_dropped = 0
        self.connections_total = 0
        self.connections_refused = 0
        self.paused_total = 0
        self.requests = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._closed_servers: list[asyncio.base_events.Server] = []  # closed by `set_accepting`
        self._listeners: list[socket.socket] = []
        self.accepting = False
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self._stop_lock = threading.Lock()
        self._pusher: asyncio.Task | None = None
        # Deferred work (SQLite reads for operator ops), one at a time, never on the event loop.
        self.worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="socket-worker")

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, *, accepting: bool = True) -> None:
        """Bind and start serving; return once listening (raise if binding failed). Without
        `accepting` the sockets listen but this server takes no connection until `set_accepting`
        (serving children take them)."""
        unix_sock = self._bind_unix() if self.unix_path else None
        tcp_sock = self._bind_tcp() if self.tcp else None
        for sock in (unix_sock, tcp_sock):
            if sock is not None:
                sock.listen(1024)
        # The bound sockets stay open here for the server's life: serving children accept on them too
        # (their fds are passed on), and the loop accepts on duplicates it may close (`set_accepting`).
        self._listeners = [sock for sock in (unix_sock, tcp_sock) if sock is not None]
        self.unix_fd = None if unix_sock is None else unix_sock.fileno()
        self.tcp_fd = None if tcp_sock is None else tcp_sock.fileno()
        self._thread = threading.Thread(target=self._serve, args=(accepting,), name="socket-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            for sock in self._listeners:
                sock.close()
            self._remove_socket_file()
            raise self._error

    def set_accepting(self, accepting: bool, timeout: float = 10.0) -> None:
        """Accept new connections on the listeners, or stop accepting them (any thread). Connections
        already open are served either way, and the listening sockets stay open for the serving
        children, which then take every new connection (`runtime.fleet` stops this process accepting
        while a child is up)."""
        loop = self._loop
        if loop is None or self._stopped.is_set() or accepting == self.accepting:
            return
        switch = self._accept(accepting)
        try:
            asyncio.run_coroutine_threadsafe(switch, loop).result(timeout)
        except (RuntimeError, concurrent.futures.TimeoutError) as exc:  # the loop closed or stopping meanwhile
            if inspect.getcoroutinestate(switch) == inspect.CORO_CREATED:
                switch.close()  # never scheduled, or its loop will not run it: nothing is left pending
            log.warning("the socket server could not %s accepting: %r", "start" if accepting else "stop", exc)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, answer what was received, flush replies, close; idempotent."""
        with self._stop_lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None or self._stopped.is_set():
                return
            if loop.is_running():
                loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._shutdown()))
            thread.join(timeout)
            self._stopped.set()
            self.worker.shutdown(wait=False, cancel_futures=True)
            self._remove_socket_file()
            for sock in self._listeners:
                sock.close()

    def stats(self) -> dict[str, int]:
        """Counters for `stats`; cheap, safe to call from any thread."""
        return {"connections_open": len(self.connections), "connections_total": self.connections_total,
                "connections_open_tcp": self.open_by_listener["tcp"], "auth_failures": self.failed_auths.total,
                "auth_timeouts": self.auth_timeouts, "auth_closed": self.auth_closed,
                "connections_refused": self.connections_refused, "requests": self.requests,
                "errors": self.protocol.errors_total, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "paused_clients": self.paused_total, "watchers": len(self.watchers),
                "watch_updates_pushed": self.watch_pushed, "watch_updates_dropped": self.watch_dropped}

    # -- internals ------------------------------------------------------------------------
    def _serve(self, accepting: bool) -> None:
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._accept(accepting))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        if self.watch_source is not None:
            self._pusher = loop.create_task(self._push_updates())
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _accept(self, accepting: bool) -> None:
        """Open the loop's servers on duplicates of the listening sockets, or close them."""
        if not accepting:
            for server in self._servers:
                server.close()  # closes the duplicate only: the listening socket stays open
            self._closed_servers.extend(self._servers)
            self._servers = []
            self.accepting = False
            return
        if self.accepting:
            return
        loop = asyncio.get_running_loop()
        needs_auth = self.token is not None
        for sock in self._listeners:
            if sock.family == socket.AF_UNIX:
                self._servers.append(await loop.create_unix_server(
                    lambda: Connection(self, Session(authenticated=True, peer="unix", token=self.token)),
                    sock=sock.dup(), backlog=1024))
            else:
                self._servers.append(await loop.create_server(
                    lambda: Connection(self, Session(authenticated=not needs_auth, peer="tcp", token=self.token)),
                    sock=sock.dup(), backlog=1024))
        self.accepting = True

    async def _push_updates(self) -> None:
        """Send each watcher its due stats update, or drop it if the watcher is not reading."""
        loop = asyncio.get_running_loop()
        seq = 0
        while True:
            await asyncio.sleep(WATCH_TICK)
            now = loop.time()
            due = [c for c in self.watchers if c.next_push <= now and c.transport is not None]
            if not due:
                continue
            try:
                body = orjson.dumps(self.watch_source(), option=orjson.OPT_NON_STR_KEYS)  # type: ignore[misc]
            except Exception:  # noqa: BLE001 - a failing snapshot skips a tick, never kills the pusher
                log.exception("stats for watchers failed")
                continue
            seq += 1
            for connection in due:
                connection.next_push = now + (connection.session.watch or 1.0)
                transport = connection.transport
                if connection.paused or transport.get_write_buffer_size() > WATCH_BUFFER:  # type: ignore[union-attr]
                    connection.dropped += 1
                    self.watch_dropped += 1
                    continue
                head = orjson.dumps({"id": connection.session.watch_id, "ok": True, "update": seq,
                                     "dropped": connection.dropped})
                line = head[:-1] + b"," + body[1:] + b"\n" if len(body) > 2 else head + b"\n"
                transport.write(line)  # type: ignore[union-attr]
                connection.pushed += 1
                self.watch_pushed += 1
                self.bytes_out += len(line)

    async def _shutdown(self) -> None:
        if self._pusher is not None:
            self._pusher.cancel()
        for server in self._servers:
            server.close()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()  # flushes what is buffered, then closes
        for _ in range(200):  # until every transport has flushed and closed (bounded: ~2 s)
            if not self.connections:
                break
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        for server in self._servers + self._closed_servers:
            await server.wait_closed()
        asyncio.get_running_loop().stop()

    def _bind_unix(self) -> socket.socket:
        path = str(self.unix_path)
        if len(os.fsencode(path)) > MAX_UNIX_PATH:
            raise ConfigError(f'socket path "{path}" is too long for a Unix socket ({MAX_UNIX_PATH} bytes at most); '
                              "use a shorter --socket path")
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None:
            if not stat.S_ISSOCK(mode):
                raise ConfigError(f'"{path}" exists and is not a socket; remove it or choose another --socket')
            if _socket_is_live(path):
                raise ConfigError(f'another appliance is already serving on "{path}"')
            os.unlink(path)  # a stale socket left by a crash
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise ConfigError(f'cannot create socket "{path}": directory "{directory}" does not exist')
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            raise ConfigError(f'cannot create socket "{path}": {exc.strerror}') from None
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.setblocking(False)
        self._inode = os.stat(path).st_ino
        return sock

    def _bind_tcp(self) -> socket.socket:
        host, port = self.tcp  # type: ignore[misc]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise ConfigError(f'cannot resolve TCP host "{host}": {exc.strerror}') from None
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        sock.setblocking(False)
        self.tcp_address = sock.getsockname()[:2]
        return sock

    def _remove_socket_file(self) -> None:
        path = self.unix_path
        if not path:
            return
        try:
            if os.stat(path).st_ino == getattr(self, "_inode", None):
                os.unlink(path)
        except OSError:
            pass


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _socket_is_live(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True
    finally:
        probe.close()
    return True


def describe(server: SocketServer) -> dict[str, Any]:
    """Where the server listens, for humans."""
    return {"unix": server.unix_path, "tcp": server.tcp_address}
