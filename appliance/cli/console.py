"""`appliance console` and `appliance up --console`: the Textual console, attached or in-process."""

from __future__ import annotations

from typing import Any

import click

from appliance.cli.options import SOCKET_OPTION, friendly_errors, on_signals
from appliance.cli.report import format_status


@click.command()
@SOCKET_OPTION
@click.option("--rate", type=float, default=2.0, show_default=True, help="Refreshes per second.")
@click.option("--readonly", is_flag=True, help="Show only: refuse promote, rollback and pause.")
@friendly_errors
def console(socket_path: str, rate: float, readonly: bool) -> None:
    """The operator console (Textual) for a running appliance, over its socket."""
    from tui.console import Console

    if not 0.1 <= rate <= 30:
        raise click.BadParameter("between 0.1 and 30 refreshes per second", param_hint="--rate")
    Console(socket_path, rate=rate, readonly=readonly).run()



def up_with_console(config: Any, options: Any) -> None:
    """The appliance on background threads, the console in the foreground; one stops the other."""
    import dataclasses
    import threading

    from appliance.runtime.app import Appliance
    from tui.console import Console

    ready = threading.Event()
    appliance = Appliance(config, dataclasses.replace(options, on_tick=None, on_ready=ready.set))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            appliance.run()
        except BaseException as exc:  # shown after the console closes
            failure.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="appliance", daemon=True)
    thread.start()
    ready.wait()
    if not failure:
        console = Console(config.socket)
        on_signals(lambda: (appliance.stop(), console.exit()))
        console.run()
    appliance.stop()
    thread.join()
    if failure:
        raise failure[0]
    click.echo(format_status(appliance.board.snapshot))
    click.echo(appliance.stop_message())
