"""The help view (?): the keys, and what the entity statuses and connection states mean."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from .base import View


def help_text(bindings: Iterable[Binding], readonly: bool) -> str:
    lines = ["Keys:"]
    for binding in bindings:
        key = "?" if binding.key == "question_mark" else binding.key
        lines.append(f"  {key:<6} {binding.description}")
    lines += ["  enter  models view: focus the selected candidate's curve; entities view: look up",
              "  tab    move between the entity key and id fields; esc leaves them",
              "  ctrl+p command palette (views, theme, quit)", "",
              "Entities: a label is joined (arrived in time), defaulted (none within the horizon: the",
              "default label was learned), late, or pending; scored only = predicted with ingest false.", "",
              "Read-only: actions are refused." if readonly else
              "Actions ask for confirmation; the appliance applies them between two events.", "",
              "States: connecting, connected, stale (a reply came late or was unreadable),",
              "disconnected (the console retries at every refresh and notices a restart)."]
    return "\n".join(lines)


class HelpView(View):
    NAME = "help"
    TAB = "? Help"
    TITLE = "Help"

    def __init__(self, *args: Any, text: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.text = text

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(self.text, id="help-text")

    def source(self) -> tuple[Any, ...]:
        return ()

    def paint(self) -> None:
        """The help is fixed: composed once."""
