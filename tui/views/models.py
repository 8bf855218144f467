"""The models view (2): what serves, the leaderboard, and the metric curve over event time.
Enter on a leaderboard row focuses that candidate's curve (Enter again: all alike)."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Static

from .. import panels
from ..link import Link
from .base import Table, View

LEADERBOARD = ("candidate", "role", "recent", "overall", "labels", "vs champion", "learns", "spec")


class ModelsView(View):
    NAME = "models"
    TAB = "2 Models"
    TITLE = "Models"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.focus_candidate: str | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(id="serving")
            yield Table(LEADERBOARD, (7,), id="leaderboard", cursor_type="row")
            yield Static(id="curve-title")
            yield Static(id="curve")

    async def fetch(self, link: Link) -> None:
        self.snapshot.curve = await link.request("curve")

    def source(self) -> tuple[Any, ...]:
        snapshot = self.snapshot
        return (snapshot.models, snapshot.curve, self.focus_candidate, panels.as_dict(snapshot.stats.get("drift")))

    def paint(self) -> None:
        snapshot = self.snapshot
        self.query_one("#serving", Static).update(panels.serving_line(snapshot.models, snapshot.stats))
        if not self.query_one("#leaderboard", Table).show_rows(panels.leaderboard_rows(snapshot.models)):
            self.repaint_when_laid_out()
        curve = self.query_one("#curve", Static)
        width = max(20, (curve.size.width or self.app.size.width) - 12)
        chart, title = panels.curve_chart(snapshot.curve, width, 8, self.focus_candidate)
        self.query_one("#curve-title", Static).update(title)
        curve.update(chart)

    def selected_candidate(self) -> str | None:
        """The candidate under the leaderboard's cursor, if any."""
        table = self.query_one("#leaderboard", Table)
        return str(table.get_row_at(table.cursor_row)[0]) if table.row_count else None

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "leaderboard":
            name = str(event.data_table.get_row_at(event.cursor_row)[0])
            self.focus_candidate = None if self.focus_candidate == name else name
            self.show()
