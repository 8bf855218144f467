"""`appliance console`: the operator's view of a running appliance, through its socket only.

Views (number keys, also in the command palette, ctrl+p): 1 overview, 2 models (leaderboard and
the metric curve over event time; Enter on a row focuses its curve), 3 entities (look one up: its
features with their age, its newest predictions and labels), 4 data (missing values, unseen
categories, feature drift, late events, dead letters with reasons), 5 alerts and audit, ? help.
Actions, each confirmed: `r` roll back, `c` promote the challenger selected in the models view,
`z` pause or resume automatic publication; `--readonly` refuses them. `p` freezes the display,
`s` saves a screenshot, `t` switches the theme.

The data is polled from a timer at a fixed rate (`--rate`, default 2 Hz): stats and models always,
the other views' data only while they show. A poll never overlaps the previous one, only the view
on screen is painted, and only when its data changed; a slow or absent appliance only changes the
connection state shown at the top. Replies of any shape are shown as far as they make sense; none
can take the console down.

This module is the app only: bindings, the poll, switching views, the operator's actions. Each view
is its own widget in `tui.views`, painting itself from the polled `tui.snapshot.Snapshot`; the
styles are in `console.tcss`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane

from .confirm import Confirm
from .link import Link, LinkError
from .snapshot import History, Snapshot
from .views import (
    AlertsView,
    DataView,
    EntitiesView,
    HelpView,
    ModelsView,
    OverviewView,
    View,
    help_text,
)

STATE_STYLE = {"connecting": "yellow", "connected": "green", "stale": "dark_orange", "disconnected": "red"}
THEMES = ("textual-dark", "textual-light", "nord", "gruvbox", "monokai")
COMPACT_BELOW = 100  # terminal columns under which the footer drops its spacing and the palette key
ALERTS_EVERY = 10  # polls between two reads of alerts and audit while their view does not show


class Console(App):
    """The appliance, live."""

    TITLE = "appliance console"
    CSS_PATH = "console.tcss"
    BINDINGS = [  # the views' keys are on their tabs, so the footer keeps its width for the actions
        Binding("1", "view('overview')", "Overview", show=False),
        Binding("2", "view('models')", "Models", show=False),
        Binding("3", "view('entities')", "Entities", show=False),
        Binding("4", "view('data')", "Data", show=False),
        Binding("5", "view('alerts')", "Alerts", show=False),
        Binding("question_mark", "view('help')", "Help"),
        Binding("r", "rollback", "Roll back"),
        Binding("c", "promote_challenger", "Promote"),
        Binding("z", "toggle_publishing", "Publishing"),
        Binding("p", "freeze", "Freeze"),
        Binding("s", "screenshot", "Screenshot"),
        Binding("t", "next_theme", "Theme"),
        Binding("q", "quit", "Quit"),
        Binding("escape", "leave_input", "Leave the field", show=False),
    ]

    def __init__(self, socket_path: str, *, rate: float = 2.0, readonly: bool = False) -> None:
        super().__init__()
        self.link = Link(socket_path)
        self.rate = rate
        self.readonly = readonly
        self.frozen = False
        self.snapshot = Snapshot(History.for_rate(rate))
        self.polls = 0
        self.last_ok = 0.0
        self._polling = False
        snapshot = self.snapshot
        self.views: dict[str, View] = {view.NAME: view for view in (
            OverviewView(snapshot), ModelsView(snapshot), EntitiesView(snapshot), DataView(snapshot),
            AlertsView(snapshot), HelpView(snapshot, text=help_text(self.BINDINGS, readonly)))}

    @property
    def stats(self) -> dict[str, Any]:
        return self.snapshot.stats

    @property
    def models(self) -> dict[str, Any]:
        return self.snapshot.models

    # -- layout ----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("connecting...", id="state")
        with TabbedContent(initial="overview"):
            for view in self.views.values():
                with TabPane(view.TAB, id=view.NAME):
                    yield view
        narrow = self.size.width < COMPACT_BELOW
        yield Footer(compact=narrow, show_command_palette=not narrow)

    def on_mount(self) -> None:
        self.set_interval(1.0 / self.rate, self.poll)
        self.poll()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for view in self.views.values():
            yield SystemCommand(f"View: {view.TITLE}", f"Show the {view.TITLE.lower()} view ({view.TAB.split()[0]})",
                                lambda name=view.NAME: self.action_view(name))

    @property
    def polling(self) -> bool:
        """Whether a poll is in flight (until it ends, the state line shows the last poll's)."""
        return self._polling

    @property
    def active_view(self) -> View | None:
        try:
            return self.views.get(self.query_one(TabbedContent).active)
        except NoMatches:
            return None

    # -- polling ---------------------------------------------------------------------------
    def poll(self) -> None:
        """Start a poll unless one is still running (a slow appliance slows the display, nothing else)."""
        if self._polling:
            return
        self._polling = True
        self.run_worker(self._poll, group="poll")  # the coroutine is made when the worker runs: none left unawaited at exit

    async def _poll(self) -> None:
        self.polls += 1
        view = self.active_view
        alerts = self.views["alerts"]
        try:
            stats = await self.link.request("stats")
            models = await self.link.request("models", limit=10)
            if view is not alerts and self.polls % ALERTS_EVERY == 1:
                await alerts.fetch(self.link)
            if view is not None:
                await view.fetch(self.link)
        except LinkError:
            self._show_state()
            return
        finally:
            self._polling = False
        self.snapshot.stats, self.snapshot.models = stats, models
        self.snapshot.history.add(stats)
        self.last_ok = time.monotonic()
        try:
            for each in self.views.values():
                each.polled()
        except NoMatches:  # the console is closing
            return
        self._show_state()
        if not self.frozen and view is not None:
            view.show()

    def _show_state(self) -> None:
        link = self.link
        state = link.state
        text = Text.assemble((f" {state} ", f"bold {STATE_STYLE.get(state, 'white')}"), f" {link.socket_path}")
        if link.identity and link.identity[0]:
            text.append(f"  pid {link.identity[0]}")
        if link.restarts:
            text.append(f"  (restarted {link.restarts}x since the console started)", style="yellow")
        if link.detail and state != "connected":
            text.append(f"  {link.detail}", style="dim")
        if self.frozen:
            text.append("  [display frozen: p]", style="bold magenta")
        if self.readonly:
            text.append("  read-only", style="dim")
        try:
            self.query_one("#state", Static).update(text, layout=False)
        except NoMatches:  # the console is closing
            pass

    def repaint(self) -> None:
        """Paint the view on screen now, changed or not."""
        view = self.active_view
        if view is not None:
            view.show(force=True)

    # -- events ----------------------------------------------------------------------------
    def on_view_paint_failed(self, event: View.PaintFailed) -> None:
        exc = event.error
        self.link.state, self.link.detail = "stale", f"could not show a reply: {exc.__class__.__name__}: {exc}"
        self._show_state()

    def on_view_poll_now(self, event: View.PollNow) -> None:
        self.poll()

    def on_resize(self, event: events.Resize) -> None:
        footer = self.query_one(Footer)
        footer.compact = event.size.width < COMPACT_BELOW
        footer.show_command_palette = not footer.compact  # ctrl+p still opens it; the help says so
        self.call_after_refresh(self.repaint)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.repaint()
        self.poll()

    # -- actions ---------------------------------------------------------------------------
    def action_view(self, name: str) -> None:
        self.query_one(TabbedContent).active = name

    def action_leave_input(self) -> None:
        self.set_focus(None)

    def action_freeze(self) -> None:
        self.frozen = not self.frozen
        self._show_state()
        if not self.frozen:
            self.repaint()

    def action_screenshot(self) -> None:
        path = self.save_screenshot()
        self.notify(f"saved {path}")

    def action_next_theme(self) -> None:
        themes = [t for t in THEMES if t in self.available_themes]
        self.theme = themes[(themes.index(self.theme) + 1) % len(themes)] if self.theme in themes else themes[0]
        self.notify(f"theme: {self.theme}")

    def action_rollback(self) -> None:
        previous = self.models.get("previous")
        if previous is None:
            self.notify("nothing to roll back to", severity="warning")
            return
        self._confirm(f"Roll back from v{self.models.get('served')} to v{previous}? Automatic publication pauses.",
                      "rollback", {})

    def action_promote_challenger(self) -> None:
        models = self.views["models"]
        assert isinstance(models, ModelsView)
        name = models.selected_candidate()
        if name is None:
            self.notify("no candidates yet", severity="warning")
            return
        if name == self.models.get("champion"):
            self.notify(f"{name} is already the champion; select a challenger in the models view (2)",
                        severity="warning")
            return
        self._confirm(f"Promote challenger {name}? A copy of its learner serves and it becomes the champion.",
                      "promote", {"challenger": name})

    def action_toggle_publishing(self) -> None:
        paused = self.models.get("publishing") == "paused"
        self._confirm(("Resume" if paused else "Pause") + " automatic publication?", "publishing",
                      {"paused": not paused})

    def _confirm(self, question: str, op: str, fields: dict) -> None:
        if self.readonly:
            self.notify("read-only console: actions are disabled", severity="warning")
            return

        async def act(answer: bool | None) -> None:
            if not answer:
                return
            try:
                reply = await self.link.request(op, actor="console", **fields)
            except LinkError as exc:
                self.notify(f"{op} failed: {exc}", severity="error")
                return
            self.notify(f"{op} queued: {reply.get('action', op)} {reply.get('version', '')}".strip())
            self.poll()

        self.push_screen(Confirm(question), act)
