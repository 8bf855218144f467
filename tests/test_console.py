"""The console driven by Textual's Pilot against a real running appliance, over its socket."""

from __future__ import annotations

import asyncio
import copy
import threading

from appliance.client import Client
from appliance.config import config_from_dict
from appliance.runtime import Appliance, RunOptions
from textual.widgets import DataTable, Static, TabbedContent

from tui.console import Console

from .conftest import SMALL_CONFIG, make_stream
from .test_registry import feed


def start(config):
    ready = threading.Event()
    appliance = Appliance(config, RunOptions(serve=True, read_source=False, on_ready=ready.set))
    thread = threading.Thread(target=appliance.run)
    thread.start()
    assert ready.wait(30)
    return appliance, thread


def small_config(short_dir):
    data = copy.deepcopy(SMALL_CONFIG)
    data["model"]["challenger"] = [{"name": "tree", "spec": "tree.HoeffdingTreeClassifier()"}]
    data["serve"] = {"db": str(short_dir / "a.db"), "socket": str(short_dir / "a.sock")}
    return config_from_dict(data)


async def until(pilot, condition, what, tries=400):
    for _ in range(tries):
        await pilot.pause(0.02)
        if condition():
            return
    raise AssertionError(f"never: {what}")


def text_of(app, selector):
    """What a Static shows, as plain text (its content rendered by Rich)."""
    import io

    from rich.console import Console as RichConsole

    printer = RichConsole(width=200, file=io.StringIO(), record=True)
    printer.print(app.query_one(selector, Static).content)
    return printer.export_text()


def test_console_shows_live_data_acts_and_survives_a_restart(short_dir):
    config = small_config(short_dir)
    appliance, thread = start(config)
    try:
        with Client(config.socket) as client:
            feed(client, make_stream(600))

        async def scenario():
            app = Console(config.socket, rate=10)
            async with app.run_test(size=(120, 40)) as pilot:
                await until(pilot, lambda: "600" in text_of(app, "#figures"), "the overview shows 600 events")
                assert "connected" in text_of(app, "#state")
                await pilot.press("2")
                assert app.query_one(TabbedContent).active == "models"
                board = app.query_one("#leaderboard", DataTable)
                await until(pilot, lambda: board.row_count == 2, "the leaderboard lists main and tree")
                assert [str(board.get_row_at(i)[0]) for i in range(2)] == ["main", "tree"]

                # promote the challenger: select it, confirm, and the appliance applies it
                board.move_cursor(row=1)
                await pilot.press("c")
                await pilot.press("y")
                await until(pilot, lambda: app.models.get("champion") == "tree", "tree becomes the champion")
                # roll back, refused first (n), then confirmed
                served = app.models["served"]
                await pilot.press("r")
                await pilot.press("n")
                await pilot.pause(0.2)
                assert app.models["served"] == served
                await pilot.press("r")
                await pilot.press("y")
                await until(pilot, lambda: app.models.get("served") != served
                            and app.models.get("publishing") == "paused", "the rollback applies")
                await pilot.press("3")
                audit = app.query_one("#audit-table", DataTable)
                await until(pilot, lambda: audit.row_count >= 3, "the audit rows show")
                actions = [str(audit.get_row_at(i)[2]) for i in range(audit.row_count)]
                assert "rollback" in actions and "promote" in actions
                assert any(str(audit.get_row_at(i)[4]) == "console" for i in range(audit.row_count))

                # the appliance stops: the console says so and keeps running
                appliance.stop()
                thread.join(60)
                await until(pilot, lambda: app.link.state == "disconnected", "disconnected")
                assert "disconnected" in text_of(app, "#state")
                # it comes back (same store, resumed): the console reconnects and notices the restart
                again, again_thread = start(config)
                try:
                    await until(pilot, lambda: app.link.state == "connected" and app.link.restarts == 1,
                                "reconnected to the restarted appliance")
                    assert "restarted 1x" in text_of(app, "#state")
                finally:
                    again.stop()
                    again_thread.join(60)

        asyncio.run(scenario())
    finally:
        appliance.stop()
        thread.join(60)


def test_readonly_console_refuses_actions(short_dir):
    config = small_config(short_dir)
    appliance, thread = start(config)
    try:
        async def scenario():
            app = Console(config.socket, rate=10, readonly=True)
            async with app.run_test(size=(80, 24)) as pilot:
                await until(pilot, lambda: app.models.get("served") is not None, "connected")
                await pilot.press("z")
                await pilot.pause(0.2)
                assert len(app.screen_stack) == 1  # no confirmation was even asked
                assert app.models.get("publishing") == "automatic"
                assert "read-only" in text_of(app, "#state")

        asyncio.run(scenario())
    finally:
        appliance.stop()
        thread.join(60)
