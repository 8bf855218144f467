"""How a serving child is told what to serve: one hand-over on its stdin, a Unix socket pair.

A child's interpreter starts before the primary knows its sockets (`runtime.interpreters`
starts them first thing in `appliance up`, so their imports run while the primary restores its
engine), and waits on its stdin for its `ChildSetup`: the listening sockets themselves, passed as
file descriptors (`SCM_RIGHTS`, never pickled), with one marker byte, then the rest as JSON
(`ChildOptions`: the config and the TCP token, never on the command line), then end of file.

The primary's end closing without a hand-over (the appliance did not start) ends the child quietly.

>>> import socket
>>> ours, theirs = socket.socketpair()
>>> listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
>>> hand_over(ours, {"index": 1}, [listener.fileno()])
>>> received = take_over(theirs)
>>> received.fields, len(received.fds)
({'index': 1}, 1)
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import orjson

MARKER = b"S"  # the byte the descriptors travel with
MAX_FDS = 2  # the Unix listener and the TCP one
MAX_SETUP = 1 << 20  # bytes: a config is a few KB


@dataclass(frozen=True)
class HandOver:
    """What a child received: the setup's fields and the descriptors, in the order they were sent."""

    fields: dict[str, Any]
    fds: list[int]


def hand_over(sock: socket.socket, fields: dict[str, Any], fds: list[int]) -> None:
    """Send `fds` and `fields` to the child at the other end of `sock`, then end the stream."""
    socket.send_fds(sock, [MARKER], fds)
    sock.sendall(orjson.dumps(fields))
    sock.shutdown(socket.SHUT_WR)


def take_over(sock: socket.socket) -> HandOver | None:
    """The child's side: wait for the hand-over; None if the other end closed without one."""
    marker, fds, _flags, _address = socket.recv_fds(sock, 1, MAX_FDS)
    if marker != MARKER:
        for fd in fds:
            socket.close(fd)
        return None
    chunks, size = [], 0
    while chunk := sock.recv(1 << 16):
        size += len(chunk)
        if size > MAX_SETUP:
            raise ValueError(f"a serving child's setup is over {MAX_SETUP} bytes")
        chunks.append(chunk)
    return HandOver(orjson.loads(b"".join(chunks)), list(fds))
