"""A serving child's connections: each line answered in the child or relayed to the primary.

Per connection (`ChildServer.handle`) request lines are read in order and each is answered before
the next is read. A line is decoded once, behind the protocol's own guards (`Protocol.decode`):
`predict` of an event, `ingest`, `label` and `auth` are answered here (`is_local`, by the child's
`Protocol`); every other line (stats, models, promote, watch, malformed lines...) is written to the
primary's private owner-only socket and its reply relayed; after a `watch` the connection is piped
to the primary both ways. A TCP connection gets the primary's rules (`serving.access`): a deadline
and a small line until authenticated, a few failed attempts, each failed reply waiting for a slot of
this process's share of the failed-authentication budget. `finish` stops reading every connection
and waits for what each read to be answered (`serving.child` calls it on SIGTERM).
"""

from __future__ import annotations

import asyncio
from typing import Any

from appliance.serving.access import (
    FAILED_AUTHS_PER_SECOND,
    MAX_FAILED_AUTHS,
    UNAUTHENTICATED_LINE,
    FailedAuthBudget,
)
from appliance.serving.protocol import Deferred, Protocol, Session, error_reply

MAX_LINE = 1 << 20  # as the primary's protocol
MAX_TCP_CONNECTIONS = 256  # per process, as the primary's TCP listener


class LineTooLong(Exception):
    """A request line over the connection's limit."""


def is_local(request: Any) -> bool:
    """Whether a child answers this request itself (else the primary does)."""
    if not isinstance(request, dict):
        return False
    op = request.get("op")
    if op in ("ingest", "label", "auth"):  # `auth` checks this connection's token, which only the child knows
        return True
    return op == "predict" and isinstance(request.get("event"), dict)


class ChildServer:
    """Answers connections accepted on the listening sockets the primary handed over; relays the rest to it."""

    def __init__(self, protocol: Protocol, private_socket: str, *, token: str | None, auth_timeout: float,
                 serving_processes: int) -> None:
        self.protocol = protocol
        self.private_socket = private_socket
        self.token = token  # TCP clients must send it (None: TCP is loopback-only and open)
        self.auth_timeout = auth_timeout
        self.failed_auths = FailedAuthBudget(FAILED_AUTHS_PER_SECOND / max(1, serving_processes))
        self.tcp_open = 0
        self.connections_total = 0
        self.connections_refused = 0
        self.requests = 0  # lines answered here or relayed to the primary
        self.stopping = False
        self._open: dict[asyncio.Task, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}  # by handler

    async def finish(self, timeout: float) -> None:
        """Stop reading every connection; wait (at most `timeout`) until each has answered the whole
        lines it had read and closed; drop the rest."""
        self.stopping = True
        for reader, writer in list(self._open.values()):
            _stop_reading(reader, writer)
        if self._open:
            _done, late = await asyncio.wait(list(self._open), timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    def stats(self) -> dict[str, int]:
        """This child's counters, named as the socket server's (`status_record.CHILD_COUNTERS`)."""
        return {"connections_open": len(self._open), "connections_total": self.connections_total,
                "connections_open_tcp": self.tcp_open, "connections_refused": self.connections_refused,
                "auth_failures": self.failed_auths.total, "requests": self.requests,
                "errors": self.protocol.errors_total}

    async def handle_unix(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.handle(reader, writer, Session(authenticated=True, peer="unix", token=self.token))

    async def handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.tcp_open >= MAX_TCP_CONNECTIONS:
            self.connections_total += 1
            self.connections_refused += 1
            writer.close()
            return
        self.tcp_open += 1
        try:
            token = self.token
            await self.handle(reader, writer, Session(authenticated=token is None, peer="tcp", token=token))
        finally:
            self.tcp_open -= 1

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: Session) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        pump: asyncio.Task | None = None
        deadline = asyncio.get_running_loop().time() + self.auth_timeout
        task = asyncio.current_task()
        assert task is not None
        self._open[task] = (reader, writer)
        self.connections_total += 1
        if self.stopping:  # accepted as the stop began
            _stop_reading(reader, writer)
        try:
            while True:
                try:
                    line = await self._next_line(reader, session, deadline)
                except TimeoutError:  # not authenticated in time
                    writer.transport.abort()
                    return
                except LineTooLong:
                    if session.authenticated:
                        writer.write(self.protocol.line_too_long())
                    else:
                        self.protocol.errors_total += 1
                        writer.write(error_reply(None, "line_too_long", f"a request line longer than "
                                                 f"{UNAUTHENTICATED_LINE} bytes before authenticating; connection closed"))
                    break
                if line is None:
                    break
                if self.stopping and not line.endswith(b"\n"):  # half a line when the stop came: never whole
                    break
                if not line.strip():
                    continue
                self.requests += 1
                if pump is not None:  # piped after a watch: the primary answers everything
                    upstream[1].write(line)  # type: ignore[index]
                    continue
                # decoded once, behind the protocol's own guards (length, nesting) as the primary's lines are
                request = self.protocol.decode(line)
                if is_local(request) or (not session.authenticated and request is None):
                    if not await self._answer(request, line, session, writer):
                        break
                    continue
                if not session.authenticated:  # the token check first, here: the primary's socket trusts us
                    check = {"op": "auth", "id": request.get("id"), "token": request.get("token")}
                    if not await self._answer(check, line, session, writer, only_failure=True):
                        break
                    if not session.authenticated:
                        continue
                if upstream is None:
                    upstream = await asyncio.open_unix_connection(self.private_socket, limit=MAX_LINE + 2)
                up_reader, up_writer = upstream
                up_writer.write(line if line.endswith(b"\n") else line + b"\n")
                if isinstance(request, dict) and request.get("op") == "watch":
                    pump = asyncio.ensure_future(_relay(up_reader, writer))
                    continue
                reply = await up_reader.readline()
                if not reply:
                    raise ConnectionError("the primary closed the forwarding connection")
                writer.write(reply)
                await writer.drain()
            if pump is not None:
                upstream[1].write_eof()  # type: ignore[index]
                await pump
        except (ConnectionError, OSError):
            pass
        finally:
            self._open.pop(task, None)
            if pump is not None:
                pump.cancel()
            if upstream is not None:
                upstream[1].close()
            writer.close()

    async def _next_line(self, reader: asyncio.StreamReader, session: Session, deadline: float) -> bytes | None:
        """The next request line (None at the end); before authentication, bounded in size and in time."""
        if session.authenticated:
            return await _read_line(reader, MAX_LINE + 2)
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise TimeoutError
        return await asyncio.wait_for(_read_line(reader, UNAUTHENTICATED_LINE + 1), remaining)

    async def _answer(self, request: dict | None, line: bytes, session: Session, writer: asyncio.StreamWriter,
                      only_failure: bool = False) -> bool:
        """Answer a request here (`line` when it did not decode: its error); a failed authentication's
        reply waits for its slot. False: close."""
        failed = session.failed_auths
        reply = self.protocol.handle_line(line, session) if request is None else self.protocol.handle_request(
            request, session)
        if isinstance(reply, Deferred):  # no local handler defers; kept whole if one ever does
            reply = self.protocol.complete(reply)
        if session.failed_auths != failed:
            await asyncio.sleep(self.failed_auths.delay(asyncio.get_running_loop().time()))
            writer.write(reply)
            await writer.drain()
            return session.failed_auths < MAX_FAILED_AUTHS
        if not only_failure:
            writer.write(reply)
            await writer.drain()
        return True


async def _read_line(reader: asyncio.StreamReader, limit: int) -> bytes | None:
    """One line (with its newline, or the unterminated rest at the end; None when nothing is left),
    raising `LineTooLong` past `limit` bytes. The reader's own limit may be smaller: a line is read
    in the pieces it allows."""
    pieces: list[bytes] = []
    size = 0
    while True:
        try:
            piece = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            piece = exc.partial
            if not pieces and not piece:
                return None
            pieces.append(piece)
            return b"".join(pieces)
        except asyncio.LimitOverrunError as exc:
            piece = await reader.readexactly(max(1, exc.consumed))
            size += len(piece)
            if size > limit:
                raise LineTooLong from None
            pieces.append(piece)
            continue
        if size + len(piece) > limit:
            raise LineTooLong
        pieces.append(piece)
        return b"".join(pieces)


def _stop_reading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read nothing more from the client: what is buffered is read to its end, then end of file."""
    writer.transport.pause_reading()
    reader.feed_eof()


async def _relay(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy the primary's lines (replies and pushed updates) to the client until either side closes."""
    while line := await source.readline():
        sink.write(line)
        await sink.drain()
