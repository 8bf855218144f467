"""The data view (4): missing values, unseen categories, feature drift, late events, dead letters."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.widgets import Static

from .. import panels
from ..link import Link
from .base import Table, View

FIELDS = ("field", "missing", "missing %", "distinct", "unseen %", "unseen % recent", "collisions %")
DEAD_LETTERS = ("watermark", "source", "offset", "reason", "payload")


class DataView(View):
    NAME = "data"
    TAB = "4 Data"
    TITLE = "Features and data"

    def compose(self) -> ComposeResult:
        yield Static(id="data-summary")
        yield Table(FIELDS, (0,), id="fields")
        yield Table(DEAD_LETTERS, (3, 4), id="dead-letters")

    async def fetch(self, link: Link) -> None:
        self.snapshot.data = await link.request("data")

    def source(self) -> tuple[Any, ...]:
        return (self.snapshot.data,)

    def paint(self) -> None:
        data = self.snapshot.data
        self.query_one("#data-summary", Static).update(panels.data_summary(data))
        laid_out = self.query_one("#fields", Table).show_rows(panels.field_rows(data))
        laid_out &= self.query_one("#dead-letters", Table).show_rows(panels.dead_letter_rows(data))
        if not laid_out:
            self.repaint_when_laid_out()
