"""The console driven by Textual's Pilot against a real running appliance, over its socket."""

from __future__ import annotations

import asyncio
import threading

from textual.widgets import DataTable, TabbedContent

from appliance.runtime.app import Appliance, RunOptions
from appliance.serving.client import Client
from tests.conftest import feed, make_stream
from tests.tui.conftest import small_config, text_of, until
from tui.console import Console


def start(config):
    ready = threading.Event()
    appliance = Appliance(config, RunOptions(serve=True, read_source=False, on_ready=ready.set))
    thread = threading.Thread(target=appliance.run)
    thread.start()
    assert ready.wait(30)
    return appliance, thread


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
                await pilot.press("5")
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
                    # the link reconnects inside a poll; the state line is written when that poll ends
                    await until(pilot, lambda: app.link.state == "connected" and app.link.restarts == 1
                                and "restarted 1x" in text_of(app, "#state"), "reconnected to the restarted appliance")
                    assert " connected " in text_of(app, "#state")
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


def test_every_view_shows_live_data_from_the_appliance(short_dir):
    config = small_config(short_dir)
    stream = make_stream(1200)
    stream.insert(30, {"type": "payment", "event_id": "broken", "ts": "yesterday", "user": "u1", "card": "c1",
                       "amount": 3})
    appliance, thread = start(config)
    try:
        with Client(config.socket) as client:
            feed(client, stream)

        async def scenario():
            app = Console(config.socket, rate=10)
            async with app.run_test(size=(120, 40)) as pilot:
                await until(pilot, lambda: "1,200" in text_of(app, "#figures"), "the overview shows 1,200 events")
                assert "ingest ok" in text_of(app, "#stages") and "learn ok" in text_of(app, "#stages")

                # models: the leaderboard and the metric curve; Enter focuses one candidate's curve
                await pilot.press("2")
                board = app.query_one("#leaderboard", DataTable)
                await until(pilot, lambda: board.row_count == 2 and any(
                    "\u2800" < ch <= "\u28ff" for ch in text_of(app, "#curve")), "the curve is drawn")
                assert "main" in text_of(app, "#curve-title") and "tree" in text_of(app, "#curve-title")
                board.focus()
                board.move_cursor(row=1)
                await pilot.press("enter")
                assert app.views["models"].focus_candidate == "tree"

                # entities: look up a card, see its features and its newest predictions with labels
                await pilot.press("3")
                await until(pilot, lambda: app.views["entities"].keys == ["card", "user"], "the entity keys are known")
                app.query_one("#entity-key").value = "card"
                app.query_one("#entity-id").focus()
                await pilot.press("c", "3", "enter")
                recent = app.query_one("#entity-recent", DataTable)
                await until(pilot, lambda: recent.row_count > 0, "card c3's predictions show")
                assert "card c3" in text_of(app, "#entity-summary")
                assert app.query_one("#entity-features", DataTable).row_count == 5
                statuses = {str(recent.get_row_at(i)[5]) for i in range(recent.row_count)}
                assert "joined" in statuses
                app.query_one("#entity-id").value = "c-none"
                app.query_one("#entity-id").focus()
                await pilot.press("enter")
                await until(pilot, lambda: "no features kept" in text_of(app, "#entity-summary"), "an unknown card")
                assert recent.row_count == 0

                # data: fields with missing and unseen figures, the dead letter with its reason
                app.set_focus(None)
                await pilot.press("4")
                dead = app.query_one("#dead-letters", DataTable)
                await until(pilot, lambda: dead.row_count == 1, "the dead letter shows")
                assert "yesterday" in str(dead.get_row_at(0)[3])
                fields = app.query_one("#fields", DataTable)
                assert [str(fields.get_row_at(i)[0]) for i in range(fields.row_count)] == ["user", "card", "amount", "city"]
                assert "dead letters 1" in text_of(app, "#data-summary")

                # the theme switches; the palette offers every view
                before = app.theme
                await pilot.press("t")
                assert app.theme != before
                titles = [command.title for command in app.get_system_commands(app.screen)]
                assert {"View: Overview", "View: Models", "View: Entities", "View: Features and data",
                        "View: Alerts and audit", "View: Help"} <= set(titles)

        asyncio.run(scenario())
    finally:
        appliance.stop()
        thread.join(60)
