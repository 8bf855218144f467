"""The socket wire protocol: one JSON request line in, one JSON reply line out.

Pure: no sockets, no event loop, no clock. `Protocol.handle_line` takes the bytes of one request
line and returns the bytes of its reply line, and never raises, whatever the bytes are. The
transport (`appliance.serving.server`) only splits lines and writes replies; `docs/protocol.md` is the
reference for clients.

>>> proto = Protocol({"add": lambda req: {"sum": req["a"] + req["b"]}})
>>> proto.handle_line(b'{"op": "add", "id": 7, "a": 1, "b": 2}', Session())
b'{"id":7,"ok":true,"sum":3}\\n'
>>> proto.handle_line(b'{"op": "mul"}', Session())
b'{"id":null,"ok":false,"error":{"code":"unknown_op","message":"unknown op \\\\"mul\\\\"; known ops: add, auth, unwatch, watch"}}\\n'
"""

from __future__ import annotations

import hmac
import logging
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import orjson

from appliance.errors import ApplianceError

__all__ = ["MAX_DEPTH", "Deferred", "Handler", "Protocol", "Session", "encode_reply", "error_reply"]

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], "dict[str, Any] | Deferred | None"]

MAX_DEPTH = 128
MIN_WATCH = 0.1  # seconds: the shortest interval between pushed stats updates
"""Deepest nesting of arrays and objects a request may have; deeper lines are `bad_json`."""

_MAX_MESSAGE = 500
_DUMPS = orjson.dumps
_LOADS = orjson.loads
_NEWLINE = orjson.OPT_APPEND_NEWLINE
# Bytes that are not brackets, for `bytes.translate(None, delete=...)` in `_nesting_error`.
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_CURLY_TO_SQUARE = bytes.maketrans(b"{}", b"[]")
_SIGNS = bytes.maketrans(b"[]", b"\x01\xff")  # +1 and -1 as signed bytes
_TOO_DEEP_RUN = b"[" * (MAX_DEPTH + 1)
_TOO_DEEP = f"nesting deeper than {MAX_DEPTH} levels"
_PEEL_ROUNDS = 8


@dataclass(slots=True)
class Session:
    """The state of one connection.

    Attributes:
        authenticated: Whether requests may run without carrying a token.
        peer: `"unix"` or `"tcp"`, the kind of socket the connection came in on.
        token: The token the server was started with, or None when it has none.
        watch: Seconds between two pushed stats updates, after a `watch` request; None when not watching.
        watch_id: The `id` of the `watch` request, carried by every update it pushes.
        failed_auths: Requests refused as `unauthorized` on this connection (the transport closes it
            after a few).
    """

    authenticated: bool = True
    peer: str = "unix"
    token: str | None = None
    watch: float | None = None
    watch_id: Any = None
    failed_auths: int = 0


def encode_reply(obj: Mapping[str, Any]) -> bytes:
    """Serialise one reply object as a JSON line ending in a newline.

    NaN and infinities become `null`. Raises `TypeError` (orjson's `JSONEncodeError`) on values
    JSON cannot carry; `Protocol.handle_line` turns that into an `internal` error reply.

    >>> encode_reply({"id": 1, "ok": True, "score": float("nan")})
    b'{"id":1,"ok":true,"score":null}\\n'
    """
    return _DUMPS(obj, option=_NEWLINE)


def error_reply(id: Any, code: str, message: str) -> bytes:  # noqa: A002 - the wire name
    """Serialise an error reply line carrying a stable `code` and a one-line human `message`.

    >>> error_reply(3, "not_found", 'model "v7" not found')
    b'{"id":3,"ok":false,"error":{"code":"not_found","message":"model \\\\"v7\\\\" not found"}}\\n'
    """
    try:
        return _DUMPS(
            {"id": id, "ok": False, "error": {"code": code, "message": message}}, option=_NEWLINE
        )
    except TypeError:  # an id JSON cannot carry: drop it rather than fail
        return _DUMPS(
            {"id": None, "ok": False, "error": {"code": code, "message": message}},
            option=_NEWLINE,
        )


def _one_line(text: str) -> str:
    """Squash a message onto one bounded line."""
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _nesting_error(line: bytes | bytearray) -> str | None:
    """Say why `line` nests too deeply to hand to the JSON parser, or None when it is safe.

    orjson before 3.9.15 recurses without limit and overflows the C stack on `[[[[...`, so
    nesting is bounded here first, in C-speed byte operations. Lines with few brackets skip the
    check. Otherwise string literals are cut out, matched bracket pairs are peeled off one layer
    per round (a shallow document vanishes in a few rounds), and what survives is measured by
    its deepest prefix, plus one level per round peeled.
    """
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return None
    unescaped = bytes(line).replace(b"\\\\", b"").replace(b'\\"', b"")
    outside_strings = b"".join(unescaped.split(b'"')[::2])
    brackets = outside_strings.translate(_CURLY_TO_SQUARE, _NOT_BRACKETS)
    if _TOO_DEEP_RUN in brackets:
        return _TOO_DEEP
    for _ in range(_PEEL_ROUNDS):
        brackets = brackets.replace(b"[]", b"")
        if not brackets:
            return None
    deepest = max(accumulate(array("b", brackets.translate(_SIGNS))))
    return _TOO_DEEP if deepest + _PEEL_ROUNDS > MAX_DEPTH else None


class Protocol:
    """Dispatch request lines to handlers and build reply lines.

    A handler takes the request object (with its `op` and `id`, without its `token`) and returns
    the fields of the success reply as a dict (None means no fields). It reports a failure by
    raising an `ApplianceError` (usually `RequestError(code, message)`); any other exception
    becomes an `internal` error and is logged with its traceback.

    Args:
        handlers: Operation name to handler. `auth` is built in and cannot be replaced.
        max_line: Longest request line accepted, in bytes, not counting the newline.

    Attributes:
        errors_total: Error replies produced so far (read by the server's stats).
    """

    def __init__(self, handlers: Mapping[str, Handler], *, max_line: int = 1 << 20) -> None:
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self.handlers: dict[str, Handler] = dict(handlers)
        self.max_line = max_line
        self.errors_total = 0
        self.known_ops = tuple(sorted(set(self.handlers) | {"auth", "watch", "unwatch"}))

    def handle_line(self, line: bytes | bytearray, session: Session) -> bytes | Deferred:
        """Answer one request line (a trailing `\\n` or `\\r\\n` is allowed) with one reply line.

        Never raises: every failure becomes an error reply. Returns a `Deferred` instead of bytes
        when the handler deferred its work (see `complete`).
        """
        try:
            request = self._parse(line)
        except _Reject as reject:
            self.errors_total += 1
            return error_reply(reject.id, reject.code, reject.message)
        return self.handle_request(request, session)

    def decode(self, line: bytes | bytearray) -> dict[str, Any] | None:
        """The request object in `line`, or None when `handle_line` would answer it with an error
        (too long, too deep, not JSON, not an object). For a transport that looks at a request
        before answering it: `handle_request` then answers it without decoding it again.
        """
        try:
            return self._parse(line)
        except _Reject:
            return None

    def handle_request(self, request: dict[str, Any], session: Session) -> bytes | Deferred:
        """Answer a request `decode` returned (or any dict a request line would decode to), as
        `handle_line` answers its line. Never raises."""
        rid = request.get("id")
        op = request.get("op")
        try:
            if not session.authenticated or op == "auth":
                self._check_auth(request, session, rid)
            handler = self._handler_for(op, rid)
        except _Reject as reject:
            self.errors_total += 1
            return error_reply(reject.id, reject.code, reject.message)
        request.pop("token", None)
        if handler is _watch:
            return self._watch(request, session, rid)
        return self._run(handler, request, rid)

    def _watch(self, request: dict[str, Any], session: Session, rid: Any) -> bytes:
        """Start (`watch`, with `interval` seconds, default 1) or stop (`unwatch`) pushed stats updates.

        The transport does the pushing; here the session only records what was asked.
        """
        if request.get("op") == "unwatch":
            session.watch = session.watch_id = None
            return _DUMPS({"id": rid, "ok": True, "watching": False}, option=_NEWLINE)
        interval = request.get("interval", 1.0)
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not MIN_WATCH <= interval <= 3600:
            self.errors_total += 1
            return error_reply(rid, "bad_request", f'"interval" must be seconds from {MIN_WATCH} to 3600')
        session.watch, session.watch_id = float(interval), rid
        return _DUMPS({"id": rid, "ok": True, "watching": True, "interval": float(interval)}, option=_NEWLINE)

    def line_too_long(self) -> bytes:
        """Build the error reply for a line over `max_line` (the transport discards the line)."""
        self.errors_total += 1
        return error_reply(
            None, "line_too_long", f"request line longer than {self.max_line} bytes; line dropped"
        )

    def line_too_long_unauthenticated(self, limit: int) -> bytes:
        """Build the error reply for a line over `limit` bytes before authenticating (the transport
        closes the connection after it)."""
        self.errors_total += 1
        return error_reply(None, "line_too_long", f"a request line longer than {limit} bytes before "
                           "authenticating; connection closed")

    def _parse(self, line: bytes | bytearray) -> dict[str, Any]:
        """Decode one line into a request object, or raise `_Reject`."""
        if len(line) > self.max_line + 2 and len(line.rstrip(b"\r\n")) > self.max_line:
            raise _Reject(None, "line_too_long", f"request line longer than {self.max_line} bytes")
        deep = _nesting_error(line)
        if deep is not None:
            raise _Reject(None, "bad_json", f"request is not valid JSON: {deep}")
        try:
            request = _LOADS(line)
        except orjson.JSONDecodeError as exc:
            raise _Reject(None, "bad_json", _one_line(f"request is not valid JSON: {exc}")) from None
        if type(request) is not dict:
            kind = type(request).__name__
            raise _Reject(None, "bad_request", f"a request must be a JSON object, not {kind}")
        return request

    def _check_auth(self, request: dict[str, Any], session: Session, rid: Any) -> None:
        """Authenticate the session from the request's `token`, or raise `unauthorized`.

        On an authenticated session only the `auth` op comes here: it checks a token it carries
        against the configured one, and succeeds without one.
        """
        given = request.get("token")
        if session.authenticated and (given is None or session.token is None):
            return
        if _token_matches(given, session.token):
            session.authenticated = True
            return
        session.failed_auths += 1
        message = (
            "wrong token"
            if given is not None
            else 'this connection needs a token: send {"op":"auth","token":"..."} first'
        )
        raise _Reject(rid, "unauthorized", message)

    def _handler_for(self, op: Any, rid: Any) -> Handler:
        """Find the handler for a request's `op`, or raise `bad_request` / `unknown_op`."""
        if type(op) is not str:
            problem = "is missing" if op is None else f"must be a string, not {type(op).__name__}"
            raise _Reject(rid, "bad_request", f'field "op" {problem}')
        if op == "auth":
            return _auth_ok
        if op == "watch" or op == "unwatch":
            return _watch
        handler = self.handlers.get(op)
        if handler is None:
            known = ", ".join(self.known_ops)
            raise _Reject(rid, "unknown_op", _one_line(f'unknown op "{op}"; known ops: {known}'))
        return handler

    def _run(self, handler: Handler, request: dict[str, Any], rid: Any) -> bytes | Deferred:
        """Call the handler and serialise its result, turning any failure into an error reply.

        A handler that returns a `Deferred` gets it back with the request's id and op set; the
        transport runs it off the event loop and writes `complete(deferred)` in its place.
        """
        try:
            result = handler(request)
        except Exception as exc:  # noqa: BLE001 - any failure becomes a reply
            return self._failure(exc, rid, request.get("op"))
        if isinstance(result, Deferred):
            result.rid, result.op = rid, request.get("op")
            return result
        return self._success(result, rid)

    def complete(self, deferred: Deferred) -> bytes:
        """Run a deferred handler's work (on any thread) and build its reply line; never raises."""
        try:
            return self._success(deferred.work(), deferred.rid)
        except Exception as exc:  # noqa: BLE001
            return self._failure(exc, deferred.rid, deferred.op)

    def _success(self, result: dict[str, Any] | None, rid: Any) -> bytes:
        try:
            if result is None:
                return _DUMPS({"id": rid, "ok": True}, option=_NEWLINE)
            reply = {"id": rid, "ok": True, **result}
            if "ok" in result or "id" in result:
                reply["id"] = rid
                reply["ok"] = True
            return _DUMPS(reply, option=_NEWLINE)
        except Exception as exc:  # noqa: BLE001 - a reply JSON cannot carry
            return self._failure(exc, rid, None)

    def _failure(self, exc: Exception, rid: Any, op: Any) -> bytes:
        self.errors_total += 1
        if isinstance(exc, ApplianceError):
            return error_reply(rid, str(exc.code), _one_line(str(exc)))
        logger.error("op %r failed", op, exc_info=exc)
        return error_reply(rid, "internal", _one_line(f"{type(exc).__name__}: {exc}"))


class Deferred:
    """What a handler returns when part of its work may block (a SQLite read): `work()` runs on the
    server's worker thread, off the event loop, and its result becomes the reply's fields. Replies
    on one connection keep the order of its requests; other connections are not held up.
    """

    __slots__ = ("work", "rid", "op")

    def __init__(self, work: Callable[[], dict[str, Any] | None]) -> None:
        self.work = work
        self.rid: Any = None
        self.op: Any = None


class _Reject(Exception):
    """A request refused before any handler runs; internal to `Protocol`."""

    def __init__(self, id: Any, code: str, message: str) -> None:  # noqa: A002
        super().__init__(message)
        self.id = id
        self.code = code
        self.message = message


def _watch(request: dict[str, Any]) -> None:
    """Marker for the built-in `watch` and `unwatch` ops (handled by `Protocol._watch`)."""


def _auth_ok(request: dict[str, Any]) -> None:
    """Reply to an `auth` request that passed the token check."""
    return None


def _token_matches(given: Any, expected: str | None) -> bool:
    """Compare a request's token with the configured one in constant time."""
    if not expected or not isinstance(given, str):  # an empty token is no token: it matches nothing
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))
