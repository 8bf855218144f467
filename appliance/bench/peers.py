"""The servers the appliance's serving path is compared with, each in its own process on a Unix socket.

* `echo`: a minimal asyncio (uvloop) NDJSON server that writes every line back: the floor of a
  Python server with the appliance's transport, doing no work per request.
* `fastapi`: FastAPI + uvicorn (uvloop, httptools when installed, one worker), `POST /predict` with
  a feature vector `{"x": {...}}`, answering `{"score": p}` from the same River model the appliance
  serves (pickled by the bench; the app is in `fastapi_peer`). It computes no features: the peer
  gets the easier job.
* `redis`: `redis-server` (no persistence) with one key holding a reply-sized value; the bench
  sends `GET`. Absent binary -> `start_redis` returns the reason instead of a server.

`python -m appliance.bench.peers echo|fastapi --unix PATH [--model FILE]` runs one peer; `start`
launches it as a subprocess and returns once its socket answers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass
class Peer:
    """A peer server process and the Unix socket it answers on."""

    name: str
    path: str
    proc: subprocess.Popen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start(kind: str, path: str, model: str | None = None, timeout: float = 30.0) -> Peer:
    """Start the `echo` or `fastapi` peer on `path`; raise RuntimeError if it does not come up."""
    command = [sys.executable, "-m", "appliance.bench.peers", kind, "--unix", path]
    if model is not None:
        command += ["--model", model]
    with open(path + ".log", "ab") as log:  # a file, not a pipe: a chatty peer never blocks on it
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    _wait_for_socket(path, proc, kind, timeout)
    return Peer(kind, path, proc)


def start_redis(directory: str, value: bytes, timeout: float = 30.0) -> Peer | str:
    """Start `redis-server` on a Unix socket in `directory` with key `k` set to `value`; return the
    peer, or why it cannot run (the binary is missing)."""
    binary = shutil.which("redis-server")
    if binary is None:
        return "redis-server is not installed (apt-get install redis-server)"
    path = os.path.join(directory, "redis.sock")
    with open(path + ".log", "ab") as log:
        proc = subprocess.Popen([binary, "--port", "0", "--unixsocket", path, "--unixsocketperm", "700",
                                 "--save", "", "--appendonly", "no", "--dir", directory, "--daemonize", "no"],
                                stdout=log, stderr=subprocess.STDOUT)
    _wait_for_socket(path, proc, "redis-server", timeout)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%s\r\n" % (len(value), value))
        if not sock.recv(64).startswith(b"+OK"):
            raise RuntimeError("redis-server did not accept SET")
    return Peer("redis", path, proc)


REDIS_GET = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"


def http_post(path: str, body: bytes) -> bytes:
    """A pre-built keep-alive HTTP/1.1 POST of a JSON body."""
    return (b"POST %s HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (path.encode(), len(body), body))


def _tail(log: str) -> str:
    try:
        with open(log, "rb") as handle:
            return handle.read().decode(errors="replace").strip()[-300:]
    except OSError:
        return ""


def _wait_for_socket(path: str, proc: subprocess.Popen, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}: "
                               f"{_tail(path + '.log')}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(path)
            return
        except OSError:
            time.sleep(0.02)  # polling for the socket to appear, with a deadline
    proc.kill()
    raise RuntimeError(f"{name} did not listen on {path} within {timeout:.0f} s")


# -- the peers themselves (run in their own process) ----------------------------------------------
class _Echo(asyncio.Protocol):
    """Write back every complete line, in one write per chunk."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        cut = buffer.rfind(b"\n") + 1
        if cut:
            self.transport.write(buffer[:cut])  # type: ignore[attr-defined]
        self.buffer = buffer[cut:]


def serve_echo(path: str) -> None:
    import uvloop

    async def main() -> None:
        server = await asyncio.get_running_loop().create_unix_server(_Echo, path)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def serve_fastapi(path: str, model_path: str) -> None:
    import importlib.util

    import uvicorn

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"  # uvicorn's fastest parser if present
    from appliance.bench.fastapi_peer import app_for

    uvicorn.run(app_for(model_path), uds=path, loop="uvloop", http=http, log_level="warning",
                access_log=False, workers=1)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run one peer server for `appliance bench`.")
    parser.add_argument("kind", choices=["echo", "fastapi"])
    parser.add_argument("--unix", required=True, help="Unix socket path")
    parser.add_argument("--model", help="pickled River model (fastapi)")
    args = parser.parse_args()
    if args.kind == "echo":
        serve_echo(args.unix)
    else:
        serve_fastapi(args.unix, args.model)


if __name__ == "__main__":
    main()
