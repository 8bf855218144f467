"""Raw-socket clients for the serving comparisons: the same client code for every server.

A `Target` is a Unix socket, pre-built requests (bytes, sent as is, in turn) and a `framing` that says
where a reply ends: `"line"` (NDJSON), `"resp"` (a Redis bulk or simple reply) or `"http"` (an
HTTP/1.1 response with Content-Length). No JSON is built or parsed while timing, so the client
costs the same few microseconds whatever server it measures.

* `sequential`: one connection, one request in flight, round trip of each in µs.
* `drive`: N connections each with one request in flight, from one epoll loop;
  `python -m appliance.bench.wire` runs it in a process, and `concurrent_processes` starts several
  so the client side uses both cores and does not serialise on one GIL.

>>> line_end(b'{"ok":true}\\n{"o')
12
>>> resp_end(b"$5\\r\\nhello\\r\\n"), resp_end(b"$5\\r\\nhel")
(11, 0)
>>> http_end(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\n{}")
40
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import orjson


def line_end(buffer: bytes | bytearray) -> int:
    """Length of the first complete NDJSON reply in `buffer`, or 0."""
    return buffer.find(b"\n") + 1


def resp_end(buffer: bytes | bytearray) -> int:
    """Length of the first complete Redis reply (bulk string or one-line reply), or 0."""
    head = buffer.find(b"\r\n")
    if head < 0:
        return 0
    if buffer[:1] != b"$":
        return head + 2
    size = int(buffer[1:head])
    total = head + 2 + (size + 2 if size >= 0 else 0)
    return total if len(buffer) >= total else 0


def http_end(buffer: bytes | bytearray) -> int:
    """Length of the first complete HTTP/1.1 response (headers + Content-Length body), or 0."""
    head = buffer.find(b"\r\n\r\n")
    if head < 0:
        return 0
    at = bytes(buffer[:head]).lower().find(b"content-length:")
    if at < 0:
        return head + 4
    size = int(bytes(buffer[at + 15:buffer.find(b"\r\n", at)]).strip())
    total = head + 4 + size
    return total if len(buffer) >= total else 0


FRAMINGS: dict[str, Callable[[bytes | bytearray], int]] = {"line": line_end, "resp": resp_end, "http": http_end}


@dataclass(frozen=True)
class Target:
    """A server to measure: its Unix socket, the requests sent to it in turn, how its replies end,
    and bytes every successful reply contains (`expect`)."""

    name: str
    path: str
    requests: tuple[bytes, ...]
    framing: str
    expect: bytes

    def connect(self, timeout: float = 10.0) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(self.path)
        return sock

    def ask(self, sock: socket.socket, i: int = 0) -> bytes:
        """Send request `i` (modulo their number) on `sock` and return the whole reply (blocking)."""
        sock.sendall(self.requests[i % len(self.requests)])
        end = FRAMINGS[self.framing]
        buffer = b""
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError(f"{self.name} closed the connection")
            buffer += chunk
            size = end(buffer)
            if size:
                return buffer[:size]

    def succeeded(self, reply: bytes) -> bool:
        return self.expect in reply


def sequential(target: Target, requests: int, warmup: int) -> dict[str, float]:
    """Round trips of `requests` sequential requests (after `warmup`), one connection: p50/p90/p99/max
    in µs and errors (replies that are not a success)."""
    timings = []
    errors = 0
    ask, clock = target.ask, time.perf_counter_ns
    with target.connect() as sock:
        for i in range(warmup + requests):
            started = clock()
            reply = ask(sock, i)
            elapsed = clock() - started
            if i >= warmup:
                timings.append(elapsed / 1000.0)
                errors += not target.succeeded(reply)
    timings.sort()
    return {"requests": len(timings), "errors": errors, "p50_us": quantile(timings, 0.5),
            "p90_us": quantile(timings, 0.9), "p99_us": quantile(timings, 0.99), "max_us": round(timings[-1], 1)}


def quantile(sorted_values: list[float], q: float) -> float:
    """The q-quantile of an ascending list (nearest rank), rounded to 0.1."""
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 1)


def drive(target: Target, connections: int, seconds: float, warmup: float = 1.0) -> dict[str, int]:
    """Keep one request in flight on each of `connections` connections for `seconds`, from one epoll
    loop; return replies completed and errors. Replies in the first `warmup` seconds are not counted."""
    end = FRAMINGS[target.framing]
    selector = selectors.DefaultSelector()
    socks = []
    for _ in range(connections):
        sock = target.connect()
        sock.setblocking(False)
        socks.append(sock)
        selector.register(sock, selectors.EVENT_READ, [bytearray(), 0])
    requests, n = target.requests, len(target.requests)
    for i, sock in enumerate(socks):
        selector.get_key(sock).data[1] = i * 7919  # connections start at different requests
        sock.sendall(requests[(i * 7919) % n])  # far smaller than the socket buffer: never partial
    warm_until = time.monotonic() + warmup
    stop = warm_until + seconds
    done = errors = 0
    counting = False
    while True:
        now = time.monotonic()
        if now >= stop:
            break
        if not counting and now >= warm_until:
            counting, done, errors = True, 0, 0
        for key, _ in selector.select(timeout=0.1):
            sock, (buffer, sent) = key.fileobj, key.data
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError(f"{target.name} closed a connection")
            buffer += chunk
            while True:
                size = end(buffer)
                if not size:
                    break
                done += 1
                if not target.succeeded(bytes(buffer[:size])):
                    errors += 1
                del buffer[:size]
                sent += 1
                key.data[1] = sent
                sock.send(requests[sent % n])
    for sock in socks:
        selector.unregister(sock)
        sock.close()
    return {"replies": done, "errors": errors}


def concurrent_processes(target: Target, connections: int, seconds: float, processes: int = 2,
                         warmup: float = 1.0) -> dict[str, float]:
    """`connections` concurrent clients split over `processes` client processes (each an epoll loop,
    `drive`); return replies per second over all of them and errors."""
    processes = max(1, min(processes, connections))
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    spec = orjson.dumps(asdict(target) | {"requests": [r.decode("latin-1") for r in target.requests],
                                          "expect": target.expect.decode("latin-1")})
    procs = [subprocess.Popen([sys.executable, "-m", "appliance.bench.wire", "--connections", str(share),
                               "--seconds", str(seconds), "--warmup", str(warmup)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=_env()) for share in shares]
    results = []
    for proc in procs:
        proc.stdin.write(spec)
        proc.stdin.close()
    for proc in procs:
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.wait(timeout=seconds + warmup + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"load client for {target.name} failed: {err.decode(errors='replace').strip()[-300:]}")
        results.append(orjson.loads(out))
    replies = sum(r["replies"] for r in results)
    return {"connections": connections, "processes": processes, "seconds": seconds,
            "per_second": round(replies / seconds, 1), "errors": sum(r["errors"] for r in results)}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def main() -> None:
    """A load client process: the target as JSON on stdin, the counts as JSON on stdout."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    spec = orjson.loads(sys.stdin.buffer.read())
    target = Target(spec["name"], spec["path"], tuple(r.encode("latin-1") for r in spec["requests"]),
                    spec["framing"], spec["expect"].encode("latin-1"))
    sys.stdout.buffer.write(orjson.dumps(drive(target, args.connections, args.seconds, args.warmup)))


if __name__ == "__main__":
    main()
