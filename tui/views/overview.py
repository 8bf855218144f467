"""The overview (1): the figures, the pipeline's stages and the last five minutes' sparklines."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Label, Static

from .. import panels
from .base import View


class OverviewView(View):
    NAME = "overview"
    TAB = "1 Overview"
    TITLE = "Overview"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._strip_lines = -1

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(id="figures")
            yield Static(id="stages")
            yield Label(" the last five minutes", id="sparks-title")
            yield Static(id="sparks")

    def source(self) -> tuple[Any, ...]:
        return (self.snapshot.stats,)

    def paint(self) -> None:
        stats, history = self.snapshot.stats, self.snapshot.history
        self.query_one("#figures", Static).update(panels.overview_figures(stats), layout=False)
        strip = panels.stage_strip(stats)
        lines = strip.plain.count("\n")
        self.query_one("#stages", Static).update(strip, layout=lines != self._strip_lines)
        self._strip_lines = lines
        sparks = self.query_one("#sparks", Static)
        series = [("events/s", list(history.events_rate), ",.0f"),
                  ("predictions/s", list(history.predictions_rate), ",.0f"),
                  ("learns/s", list(history.labels_rate), ",.0f"),
                  ("predict p99 µs", list(history.p99), ",.0f")]
        sparks.update(panels.sparklines(series, sparks.size.width or self.app.size.width, history.p99.maxlen),
                      layout=False)
