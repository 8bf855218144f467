"""The console's connection to a running appliance: its socket only, never its internals.

`Link` keeps one asyncio connection, sends NDJSON requests with a timeout, and reports its state:
connecting, connected, stale (connected but a reply came late or failed to parse), disconnected.
After a failure it reconnects on the next request, and it notices a restart (another pid or start
time in `health`).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import orjson

STATES = ("connecting", "connected", "stale", "disconnected")


class LinkError(Exception):
    """A request could not be answered (no appliance, a lost connection, an error reply)."""

    def __init__(self, message: str, code: str = "unavailable") -> None:
        super().__init__(message)
        self.code = code


class Link:
    """One connection to the appliance's Unix socket, reopened as needed."""

    def __init__(self, socket_path: str, timeout: float = 2.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.state = "connecting"
        self.detail = ""
        self.identity: tuple[Any, Any] | None = None  # (pid, started_at) of the appliance we talk to
        self.restarts = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return the reply; raise `LinkError` if there is none or it is an error."""
        async with self._lock:
            if self._writer is None:
                await self._connect()
            assert self._reader is not None and self._writer is not None
            request_id = next(self._ids)
            try:
                self._writer.write(orjson.dumps({"op": op, "id": request_id, **fields}) + b"\n")
                await self._writer.drain()
                line = await asyncio.wait_for(self._reader.readline(), self.timeout)
            except (TimeoutError, OSError, ConnectionError) as exc:
                self._drop("stale" if isinstance(exc, asyncio.TimeoutError) else "disconnected",
                           f"{op}: {exc.__class__.__name__}")
                raise LinkError(f"no reply to {op}") from None
            except asyncio.CancelledError:  # a reply may still be on its way: never read it as another's
                self._drop("connecting", f"{op} cancelled")
                raise
            if not line:
                self._drop("disconnected", "the appliance closed the connection")
                raise LinkError("the appliance closed the connection")
        try:
            reply = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.state, self.detail = "stale", f"unreadable reply to {op}"
            raise LinkError(f"unreadable reply to {op}", "bad_reply") from None
        if not isinstance(reply, dict) or reply.get("id") != request_id:
            async with self._lock:
                self._drop("stale", f"unexpected reply to {op}")
            raise LinkError(f"unexpected reply to {op}", "bad_reply")
        if not reply.get("ok"):
            error = reply.get("error") if isinstance(reply.get("error"), dict) else {}
            raise LinkError(str(error.get("message", "error")), str(error.get("code", "error")))
        self.state, self.detail = "connected", ""
        del reply["id"]  # the envelope's, new at every request: without it, an unchanged reply compares equal
        return reply

    async def _connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.socket_path, limit=1 << 24), self.timeout)
        except (TimeoutError, OSError) as exc:
            self._drop("disconnected", f"cannot connect to {self.socket_path}: {exc.__class__.__name__}")
            raise LinkError(self.detail) from None
        self.state = "connected"
        line = None
        try:
            self._writer.write(orjson.dumps({"op": "health", "id": 0}) + b"\n")
            await self._writer.drain()
            line = await asyncio.wait_for(self._reader.readline(), self.timeout)
            health = orjson.loads(line) if line else {}
        except (TimeoutError, OSError, orjson.JSONDecodeError):
            health = {}
        identity = (health.get("pid"), health.get("started_at")) if isinstance(health, dict) else (None, None)
        if self.identity is not None and identity != self.identity and identity != (None, None):
            self.restarts += 1
        if identity != (None, None):
            self.identity = identity

    def _drop(self, state: str, detail: str) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        self.state, self.detail = state, detail

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
        self._reader = self._writer = None
