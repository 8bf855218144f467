"""A connection's request lines, cut by one set of rules in every process that serves the socket.

The primary's connections (`serving.connection`) and a serving child's (`serving.child_connections`)
read their bytes through `Lines`, so a client sees the same framing whichever process accepted it:

- a line ends at "\\n"; blank lines are skipped;
- a line of more than `limit` + 1 bytes (a "\\r" before the newline is allowed) is `TOO_LONG`, reported
  once: an unfinished one as soon as it is over the limit, its bytes dropped as they arrive up to its
  newline, so a client sending without end holds at most one limit of memory; the next line is read
  as usual (an unauthenticated connection is closed instead, by its connection);
- at the client's end of file the unterminated rest is the last line (`echo -n ... | socat` is answered).

>>> lines = Lines()
>>> lines.feed(b'{"op": "health"}\\n\\n{"op": "st')
>>> lines.take(100, ended=False), lines.take(100, ended=False)
(bytearray(b'{"op": "health"}'), None)
>>> lines.feed(b'ats"}')
>>> lines.take(100, ended=True)
bytearray(b'{"op": "stats"}')
>>> lines.feed(b"x" * 50)
>>> lines.take(10, ended=False) is TOO_LONG, lines.unread
(True, 0)
>>> lines.feed(b'xxxx\\n{"op": "health"}\\n')  # the rest of the long line is dropped
>>> lines.take(100, ended=False)
bytearray(b'{"op": "health"}')
"""

from __future__ import annotations

from typing import Final, final

__all__ = ["TOO_LONG", "Lines", "TooLong"]


@final
class TooLong:
    """What `Lines.take` returns for a line over the limit (one instance: `TOO_LONG`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "TOO_LONG"


TOO_LONG: Final = TooLong()


class Lines:
    """The bytes a connection has read and not yet taken as lines."""

    __slots__ = ("buffer", "discarding", "start")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.start = 0  # where the next line begins; `compact` drops what is before it
        self.discarding = False  # dropping the rest of a line reported too long

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def take(self, limit: int, ended: bool) -> bytearray | TooLong | None:
        """The next line (without its newline), `TOO_LONG`, or None when no whole line is read yet.

        `limit`: the bytes a line may hold (plus one, for a "\\r"); `ended`: no more bytes will come,
        so the unterminated rest is the last line."""
        buffer = self.buffer
        while True:
            start = self.start
            end = buffer.find(b"\n", start)
            if end < 0:
                return self._rest(limit, ended)
            self.start = end + 1
            if self.discarding:  # the newline of a line already reported
                self.discarding = False
                continue
            if end - start > limit + 1:
                return TOO_LONG
            line = buffer[start:end]
            if line.strip():
                return line

    def _rest(self, limit: int, ended: bool) -> bytearray | TooLong | None:
        """What follows the last newline: dropped while discarding, reported once it is over the
        limit, or the last line at the end of input."""
        buffer = self.buffer
        start = self.start
        if self.discarding:
            del buffer[:]
            self.start = 0
            return None
        if len(buffer) - start > limit + 1:
            del buffer[:]
            self.start = 0
            self.discarding = not ended
            return TOO_LONG
        if ended and start < len(buffer):
            self.start = len(buffer)
            line = buffer[start:]
            return line if line.strip() else None
        return None

    def compact(self) -> None:
        """Drop the lines taken (call once per batch of `take`s, not per line)."""
        if self.start:
            del self.buffer[:self.start]
            self.start = 0

    @property
    def unread(self) -> int:
        """Bytes read but not yet taken as lines."""
        return len(self.buffer) - self.start

    def rest(self) -> bytes:
        """Hand over every byte not yet taken (a connection piped elsewhere), leaving none."""
        rest = bytes(self.buffer[self.start:])
        self.clear()
        return rest

    def clear(self) -> None:
        """Forget everything read (the connection is closing)."""
        del self.buffer[:]
        self.start = 0
        self.discarding = False
