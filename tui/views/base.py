"""What every console view shares: `View` (a widget that paints itself from the polled snapshot,
only when what it shows changed) and `Table` (a DataTable that fits its width and rewrites only
the cells that changed)."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.containers import Vertical
from textual.coordinate import Coordinate
from textual.css.query import NoMatches
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import DataTable

from .. import panels
from ..link import Link
from ..snapshot import Snapshot

SCROLLBAR = 2  # columns a table's vertical scrollbar takes
# A table rewrites at most this many changed cells in place; beyond, rebuilding it costs less CPU
# (measured: 240 cells rewritten one by one took 2.5 times the CPU of clearing and adding 30 rows).
IN_PLACE_CELLS = 8


class View(Vertical):
    """One view of the console, in its own tab.

    The console's poll calls `fetch` (the view's own requests) while the view shows, `polled` on
    every poll, and `show` while it shows. `show` sets `shown`, a reactive attribute: Textual
    calls `watch_shown`, so the view paints, only when what it shows (`source`) differs from what
    it showed last.
    """

    NAME: ClassVar[str]  # its tab's id
    TAB: ClassVar[str]  # its tab's label, with the key that shows it
    TITLE: ClassVar[str]

    shown: reactive[tuple[Any, ...] | None] = reactive(None, init=False, repaint=False)

    class PaintFailed(Message):
        """A reply of a shape the view could not show; the console says so in its state line."""

        def __init__(self, error: Exception) -> None:
            super().__init__()
            self.error = error

    class PollNow(Message):
        """The view needs fresh data now (a lookup was asked for)."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__(id=f"{self.NAME}-view")
        self.snapshot = snapshot
        self.paints = 0

    def source(self) -> tuple[Any, ...]:
        """What the view shows; it is painted again when this changes."""
        raise NotImplementedError

    def paint(self) -> None:
        """Put `source()` on screen."""
        raise NotImplementedError

    async def fetch(self, link: Link) -> None:
        """The view's own requests, made only while it shows (into `self.snapshot`)."""

    def polled(self) -> None:
        """Called after every successful poll, shown or not: cheap bookkeeping only."""

    def show(self, force: bool = False) -> None:
        """Paint if what the view shows changed (or always, with `force`: a resize, a new tab)."""
        if force:
            self.set_reactive(View.shown, self.source())
            self._paint()
        else:
            self.shown = self.source()

    def watch_shown(self) -> None:
        self._paint()

    def _paint(self) -> None:
        try:
            self.paint()
        except NoMatches:  # the console is closing
            return
        except Exception as exc:  # an unexpected reply shape must not take the console down
            self.post_message(self.PaintFailed(exc))
            return
        self.paints += 1

    def repaint_when_laid_out(self) -> None:
        self.call_after_refresh(self.show, True)


class Table(DataTable):
    """A view's table: its columns, which of them give up width (ending in "…") so that the others
    are shown whole, and the rows it shows, so that a repaint with few changed cells rewrites only
    those (keeping the cursor and the scroll position); more changes rebuild it, keeping the cursor."""

    def __init__(self, header: tuple[str, ...], flexible: tuple[int, ...] = (), *, id: str,
                 **options: Any) -> None:
        super().__init__(id=id, zebra_stripes=True, **options)
        self.header = header
        self.flexible = flexible
        self.rows_shown: list[tuple[str, ...]] = []

    def on_mount(self) -> None:
        self.add_columns(*self.header)

    def show_rows(self, rows: list[tuple[str, ...]]) -> bool:
        """Show `rows`, shortened to fit; False when the table is not laid out yet (paint again)."""
        width = (self.size.width or self.app.size.width) - SCROLLBAR
        fitted = panels.fit_columns(self.header, rows, width, self.flexible)
        changed = [(Coordinate(y, x), cell) for y, (new, old) in enumerate(zip(fitted, self.rows_shown)) if new != old
                   for x, cell in enumerate(new) if x >= len(old) or cell != old[x]]
        if len(fitted) == len(self.rows_shown) and len(changed) <= IN_PLACE_CELLS:
            for coordinate, cell in changed:
                self.update_cell_at(coordinate, cell, update_width=True)
        else:
            selected = self.cursor_row
            self.clear()
            for row in fitted:
                self.add_row(*row)
            if self.row_count:
                self.move_cursor(row=min(selected, self.row_count - 1))
        self.rows_shown = fitted
        return bool(self.size.width)
