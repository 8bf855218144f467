"""The console fits 80 and 120 columns: the footer's actions whole, long cells shortened with "…"
rather than the columns after them cut (Textual's Pilot, against recorded replies on a real socket)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable

import pytest
from rich.console import Console as RichConsole

from appliance.serving.protocol import Protocol
from appliance.serving.server import SocketServer
from tests.tui.conftest import REPLIES, look_up, settled
from tui import panels
from tui.console import Console


@pytest.fixture
def canned(short_dir, monkeypatch):
    monkeypatch.chdir(short_dir)
    handlers = {op: (lambda request, reply=reply: dict(reply)) for op, reply in REPLIES.items()}
    server = SocketServer(Protocol(handlers), unix_path="appliance.sock")
    server.start()
    yield "appliance.sock"
    server.stop()


def screen_text(app) -> list[str]:
    """The screen as the terminal shows it, one string per line."""
    width, height = app.size
    out = RichConsole(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True,
                      legacy_windows=False, safe_box=False)
    out.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return out.export_text().splitlines()


async def screen_once(pilot, ready: Callable[[list[str]], bool]) -> list[str]:
    """The screen once `ready` holds for it (or as it is after 5 s, for the test's assertion to show).

    A DataTable measures its columns on its own idle turn, after the rows are in, so the first
    frame after a paint may still show the columns as wide as their headers."""
    lines = screen_text(pilot.app)
    for _ in range(250):
        if ready(lines):
            break
        await pilot.pause(0.02)
        lines = screen_text(pilot.app)
    return lines


def dead_letter_row(lines: list[str]) -> str:
    """The first row under the dead letters' header ("" while the table is not on screen)."""
    at = next((i for i, line in enumerate(lines) if "watermark" in line and "payload" in line), None)
    return "" if at is None or at + 1 >= len(lines) else lines[at + 1]


def shown(view: str, keys: tuple[str, ...], size: tuple[int, int], socket: str,
          ready: Callable[[list[str]], bool]) -> list[str]:
    async def scenario() -> list[str]:
        app = Console(socket, rate=20)
        async with app.run_test(size=size) as pilot:
            await settled(view, *keys)(pilot)
            await pilot.pause()
            return await screen_once(pilot, ready)
    return asyncio.run(scenario())


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_the_footer_and_the_dead_letters_fit_the_terminal(canned, size):
    lines = shown("data", ("4",), size, canned, lambda lines: dead_letter_row(lines).rstrip().endswith("…"))
    footer = lines[-1]
    for action in ("? Help", "r Roll back", "c Promote", "z Publishing", "p Freeze", "s Screenshot", "t Theme",
                   "q Quit"):
        assert action in footer, footer
    row = dead_letter_row(lines)
    assert "inbox" in row and "3670" in row and row.rstrip().endswith("…"), row  # the payload shortened, not cut
    assert "timestamp 'yest" in row


def test_the_entities_view_shows_its_last_column_at_120(canned):
    async def scenario() -> list[str]:
        app = Console(canned, rate=20)
        async with app.run_test(size=(120, 40)) as pilot:
            await look_up(pilot, "card", "c3")
            await pilot.pause()
            return await screen_once(pilot, lambda lines: any(line.rstrip().endswith("1,662") for line in lines))
    lines = asyncio.run(scenario())
    header = next(line for line in lines if "event time" in line and "status" in line)
    assert "delay s" in header and "card_since" in "".join(lines)
    assert any(line.rstrip().endswith("1,662") for line in lines), "\n".join(lines)


def test_fit_columns_shortens_only_the_flexible_columns_and_keeps_them_readable():
    header = ("when", "reason", "payload")
    rows = [("2026-01-01", "a reason of some length", "x" * 200)]
    fitted = panels.fit_columns(header, rows, 70, (1, 2))
    when, reason, payload = fitted[0]
    assert when == "2026-01-01" and payload.endswith("…")
    assert sum(len(cell) + panels.CELL_PADDING for cell in fitted[0]) <= 70
    assert reason == "a reason of some length"  # the widest gives up first: the short one stays whole
    assert panels.fit_columns(header, rows, 400, (1, 2)) == rows
    narrow = panels.fit_columns(header, rows, 10, (1, 2))[0]
    assert len(narrow[1]) >= panels.MIN_FLEXIBLE and len(narrow[2]) == panels.MIN_FLEXIBLE
