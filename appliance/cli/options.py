"""What the `appliance` commands share: the store, socket and config options, and error handling."""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from appliance.errors import ApplianceError

DB_OPTION = click.option("--db", envvar="APPLIANCE_DB", default="appliance.db", show_default=True,
                         help="SQLite store (env APPLIANCE_DB).")
SOCKET_OPTION = click.option("--socket", "socket_path", envvar="APPLIANCE_SOCKET", default="appliance.sock",
                             show_default=True, help="Unix socket of the running appliance (env APPLIANCE_SOCKET).")
CONFIG_OPTION = click.option("--config", "config_path", envvar="APPLIANCE_CONFIG", type=click.Path(dir_okay=False),
                             help="appliance.toml to use (default: ./appliance.toml, else the bundled sample).")



def _default_export_workers() -> int:
    from appliance.offline.partitions import default_workers  # on use: every command imports this module

    return default_workers()


EXPORT_WORKERS_OPTION = click.option(
    "--workers", type=click.IntRange(0, 64), default=_default_export_workers,
    show_default="one per core, at most 8; 0 on one core",
    help="Processes keeping the entities' state, each its share, beside the one reading the store; 0 does "
         "everything in this process. The rows are the same.")


FLOW_WORKERS_OPTION = click.option(
    "--workers", type=click.IntRange(min=1, max=64), default=1, show_default=True,
    help="Processes keeping the entities' state: with N >= 2, each keeps its share and reads then folds it "
         "while the learner, which stays one serial step, settles the batch before. The rows are the same "
         "(docs/benchmarks.md measures what it gains).")


def _max_restarts() -> int:
    from appliance.runtime.supervision import MAX_RESTARTS  # on use: every command imports this module

    return MAX_RESTARTS


RESTARTS_OPTION = click.option("--restarts", type=click.IntRange(0, 1000), default=_max_restarts, show_default="5",
                               help="Restarts of a failed dataflow allowed within 10 minutes, each from its last "
                                    "checkpoint; 0 stops on the first failure.")


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one-line click errors (exit code 1), no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApplianceError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def require_store(path: str) -> None:
    """Fail with one line when a command that reads the store finds none."""
    if not Path(path).exists():
        raise click.ClickException(f'no store at "{path}"; run `appliance replay` or `appliance up` first')


def on_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, frame: Any) -> None:
        click.echo(f"\n{signal.Signals(signum).name}: stopping (answering in-flight requests, flushing)", err=True)
        # Once: stopping waits for the server thread while holding the server's stop lock, and a second
        # signal (Ctrl-C twice, SIGTERM then SIGINT) runs this handler again on the same thread, inside
        # that wait; calling stop() again there deadlocked the process.
        if stopping.is_set():
            return
        stopping.set()
        stop()

    stopping = threading.Event()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
