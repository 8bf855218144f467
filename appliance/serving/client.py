"""A small blocking client for the appliance's socket (what the CLI and the benchmarks use).

Any language can talk to the appliance with a socket and a JSON library; this is only a
convenience. `request` raises `RequestError` on an error reply; `send_line` returns any reply.

    with Client("appliance.sock") as client:
        reply = client.request("predict", event={"user_id": "u1", "amount": 12.5, ...})
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from typing import Any

import orjson

from appliance.errors import ConnectFailed, RequestError

__all__ = ["Client"]


class Client:
    """One connection to a running appliance, over its Unix socket or TCP."""

    def __init__(self, socket_path: str | None = "appliance.sock", *, tcp: tuple[str, int] | None = None,
                 token: str | None = None, timeout: float = 10.0) -> None:
        self.where = f"{tcp[0]}:{tcp[1]}" if tcp else str(socket_path)
        try:
            if tcp is not None:
                self.sock = socket.create_connection(tcp, timeout=timeout)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            else:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(str(socket_path))
        except FileNotFoundError:
            raise ConnectFailed(f'cannot connect to {self.where}: no such socket (is the appliance running? '
                                 "start it with `appliance up`)") from None
        except ConnectionRefusedError:
            raise ConnectFailed(f"cannot connect to {self.where}: connection refused (is the appliance running? "
                                 "start it with `appliance up`)") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self.where}: {exc.strerror or exc}") from None
        self._buffer = bytearray()
        self._ids = itertools.count(1)
        if token is not None:
            self.request("auth", token=token)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return its reply; raise `RequestError` if the reply is an error."""
        reply = self.send_line(orjson.dumps({"op": op, "id": next(self._ids), **fields}))
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise RequestError(str(error.get("code", "error")), str(error.get("message", reply)))
        return reply

    def send_line(self, line: bytes) -> dict[str, Any]:
        """Send one raw request line and return the parsed reply, whatever it says."""
        self._send(line if line.endswith(b"\n") else line + b"\n")
        return orjson.loads(self._read_line())

    def pipeline(self, lines: list[bytes]) -> list[dict[str, Any]]:
        """Send many request lines at once, then read one reply per line, in order."""
        self._send(b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines))
        return [orjson.loads(self._read_line()) for _ in lines]

    def watch(self, interval: float = 1.0) -> Iterator[dict[str, Any]]:
        """Ask for pushed stats updates every `interval` seconds and yield them as they come."""
        self.request("watch", interval=interval)
        self.sock.settimeout(interval + 10.0)
        while True:
            yield orjson.loads(self._read_line())

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise ConnectFailed(f"lost the connection to {self.where}: {exc.strerror or exc}") from None

    def _read_line(self) -> bytes:
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n")
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                return line
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                raise ConnectFailed(f"no reply from {self.where} in time") from None
            except OSError as exc:
                raise ConnectFailed(f"lost the connection to {self.where}: {exc.strerror or exc}") from None
            if not chunk:
                raise ConnectFailed(f"{self.where} closed the connection")
            buffer += chunk
