"""Snapshots of the console at 80x24 and 120x40 (pytest-textual-snapshot), on deterministic data.

The console talks to a real socket server answering with the replies a real appliance gave
after a fixed stream (`tests/data/console_replies.json`, made by `make_console_replies.py`),
so every run paints the same screen. After an intended change to the console, look at the
failing report, then accept with `pytest tests/tui/test_console_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import pytest

from appliance.serving.protocol import Protocol
from appliance.serving.server import SocketServer
from tests.tui.conftest import REPLIES, look_up, settled, tables_measured, until
from tui.console import Console


@pytest.fixture
def canned_appliance(short_dir, monkeypatch):
    """A socket server answering every op with its recorded reply; the socket path is relative
    (the console shows it), so the screen does not depend on the temporary directory."""
    monkeypatch.chdir(short_dir)
    handlers = {op: (lambda request, reply=reply: dict(reply)) for op, reply in REPLIES.items()}
    server = SocketServer(Protocol(handlers), unix_path="appliance.sock")
    server.start()
    yield "appliance.sock"
    server.stop()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_overview(snap_compare, canned_appliance, size):
    assert snap_compare(Console(canned_appliance, rate=20), terminal_size=size, run_before=settled("overview"))


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_models(snap_compare, canned_appliance, size):
    assert snap_compare(Console(canned_appliance, rate=20), terminal_size=size, run_before=settled("models", "2"))


def test_entities(snap_compare, canned_appliance):
    async def run_before(pilot) -> None:
        app = pilot.app
        await look_up(pilot, "card", "c3")
        await settled("entities")(pilot)
        app.set_focus(None)  # no blinking cursor in the picture
        app.repaint()
        await until(pilot, lambda: tables_measured(app), "the tables measured their columns")
        await pilot.pause()

    assert snap_compare(Console(canned_appliance, rate=20), terminal_size=(120, 40), run_before=run_before)


def test_data(snap_compare, canned_appliance):
    assert snap_compare(Console(canned_appliance, rate=20), terminal_size=(120, 40), run_before=settled("data", "4"))


def test_alerts(snap_compare, canned_appliance):
    assert snap_compare(Console(canned_appliance, rate=20), terminal_size=(80, 24), run_before=settled("alerts", "5"))
