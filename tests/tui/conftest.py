"""Helpers shared by the console's tests: waiting on a Pilot, reading a widget's text, canned replies."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from rich.cells import cell_len
from textual.widgets import Static

from appliance.config.file import config_from_dict
from tests.conftest import SMALL_CONFIG
from tui.views.base import Table


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


REPLIES = json.loads((Path(__file__).parent.parent / "data" / "console_replies.json").read_text())


def settled(view: str, *keys: str):
    """Open `view`, then wait until the console has polled twice and painted it."""
    async def run_before(pilot) -> None:
        app = pilot.app
        await pilot.press(*keys)
        for _ in range(500):
            await pilot.pause(0.02)
            if app.polls >= 3 and app.views[view].shown is not None and app.link.state == "connected":
                break
        else:
            raise AssertionError(f"the {view} view never painted")
        app.frozen = True  # no further repaint between here and the screenshot
        await until(pilot, lambda: tables_measured(app), "the tables measured their columns")
        await pilot.pause()
    return run_before


async def look_up(pilot, key: str, entity: str) -> None:
    """Open the entities view, look up one entity as an operator would, and wait until it is shown."""
    app = pilot.app
    await pilot.press("3")
    await until(pilot, lambda: bool(app.views["entities"].keys), "the entity keys listed")
    app.query_one("#entity-key").value = key
    app.query_one("#entity-id").value = entity
    app.query_one("#entity-id").focus()
    await pilot.press("enter")
    await until(pilot, lambda: bool(app.snapshot.entity) and app.views["entities"].shown == (app.snapshot.entity,),
                f"{key} {entity} shown")


def tables_measured(app) -> bool:
    """Every table on screen has measured its columns for the rows it shows: a DataTable does that on
    its own idle turn after the rows go in, so a frame taken sooner shows columns as wide as their
    headers."""
    for table in app.screen.query(Table):
        for i, column in enumerate(table.ordered_columns):
            cells = [table.header[i], *(row[i] for row in table.rows_shown if i < len(row))]
            if column.content_width < max(cell_len(cell) for cell in cells):
                return False
    return True


def small_config(short_dir):
    data = copy.deepcopy(SMALL_CONFIG)
    data["model"]["challenger"] = [{"name": "tree", "spec": "tree.HoeffdingTreeClassifier()"}]
    data["serve"] = {"db": str(short_dir / "a.db"), "socket": str(short_dir / "a.sock")}
    return config_from_dict(data)
