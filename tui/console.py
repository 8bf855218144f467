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
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, Select, Static, TabbedContent, TabPane

from . import panels
from .link import Link, LinkError

HISTORY_SECONDS = 300  # the sparklines cover the last five minutes
STATE_STYLE = {"connecting": "yellow", "connected": "green", "stale": "dark_orange", "disconnected": "red"}
VIEWS = {"overview": "Overview", "models": "Models", "entities": "Entities", "data": "Features and data",
         "alerts": "Alerts and audit", "help": "Help"}
THEMES = ("textual-dark", "textual-light", "nord", "gruvbox", "monokai")


class Confirm(ModalScreen[bool]):
    """Ask before an action that changes what serves."""

    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Label(self.question)
            yield Label("[b]y[/b] to confirm, [b]n[/b] or Esc to cancel")
            yield Button("Yes", id="yes", variant="warning")
            yield Button("No", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


COLUMNS = {
    "#leaderboard": ("candidate", "role", "recent", "overall", "labels", "vs champion", "learns", "spec"),
    "#entity-features": ("feature", "value"),
    "#entity-recent": ("event time", "event id", "score", "version", "label", "status", "delay s"),
    "#fields": ("field", "missing", "missing %", "distinct", "unseen %", "unseen % recent", "collisions %"),
    "#dead-letters": ("watermark", "source", "offset", "reason", "payload"),
    "#alert-table": ("#", "event time", "kind", "subject", "action"),
    "#audit-table": ("#", "event time", "action", "version", "by", "reason"),
}
# The columns that give up width (ending in "…") so that the others are shown whole.
FLEXIBLE = {"#leaderboard": (7,), "#entity-features": (), "#entity-recent": (1,), "#fields": (0,),
            "#dead-letters": (3, 4), "#alert-table": (3, 4), "#audit-table": (5,)}
SCROLLBAR = 2  # columns a table's vertical scrollbar takes
COMPACT_BELOW = 100  # terminal columns under which the footer drops its spacing and the palette key


class Console(App):
    """The appliance, live."""

    TITLE = "appliance console"
    CSS = """
    #state { height: 1; padding: 0 1; }
    TabbedContent { height: 1fr; }
    TabPane { height: 1fr; }
    #figures { height: 12; }
    #stages { height: auto; margin: 1 0 0 0; }
    #sparks-title { margin: 1 0 0 0; color: $text-muted; }
    #sparks { height: 4; }
    #confirm { width: 60; height: auto; border: thick $warning; background: $surface; padding: 1 2; }
    Confirm { align: center middle; }
    DataTable { height: 1fr; }
    #leaderboard { height: auto; max-height: 8; }
    #curve-title, #curve { height: auto; }
    #entity-bar { height: 3; }
    #entity-key { width: 24; }
    #entity-id { width: 1fr; }
    #entity-tables { height: 1fr; }
    #entity-features { width: auto; max-width: 40%; }
    #fields { height: auto; max-height: 12; }
    #alert-table { height: 1fr; }
    #audit-table { height: 2fr; }
    """
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
        self.stats: dict[str, Any] = {}
        self.models: dict[str, Any] = {}
        self.alerts: list[dict] = []
        self.audit: list[dict] = []
        self.curve: dict[str, Any] = {}
        self.data: dict[str, Any] = {}
        self.entity: dict[str, Any] = {}
        self.entity_query: tuple[str, str] | None = None
        self.focus_candidate: str | None = None
        history = max(10, round(HISTORY_SECONDS * rate))
        self.events_rate: deque = deque(maxlen=history)
        self.predictions_rate: deque = deque(maxlen=history)
        self.labels_rate: deque = deque(maxlen=history)
        self.p99: deque = deque(maxlen=history)
        self.polls = 0
        self.paints = 0
        self.last_ok = 0.0
        self._polling = False
        self._painted: dict[str, Any] = {}
        self._keys: list[str] = []
        self._strip_lines = -1

    # -- layout ----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("connecting...", id="state")
        with TabbedContent(initial="overview"):
            with TabPane("1 Overview", id="overview"):
                with VerticalScroll():
                    yield Static(id="figures")
                    yield Static(id="stages")
                    yield Label(" the last five minutes", id="sparks-title")
                    yield Static(id="sparks")
            with TabPane("2 Models", id="models"):
                with VerticalScroll():
                    yield Static(id="serving")
                    yield DataTable(id="leaderboard", cursor_type="row", zebra_stripes=True)
                    yield Static(id="curve-title")
                    yield Static(id="curve")
            with TabPane("3 Entities", id="entities"):
                with Horizontal(id="entity-bar"):
                    yield Select([], prompt="key", id="entity-key", allow_blank=True)
                    yield Input(placeholder="entity id, then Enter", id="entity-id")
                yield Static(panels.entity_summary({}), id="entity-summary")
                with Horizontal(id="entity-tables"):
                    yield DataTable(id="entity-features", zebra_stripes=True)
                    yield DataTable(id="entity-recent", zebra_stripes=True)
            with TabPane("4 Data", id="data"):
                yield Static(id="data-summary")
                yield DataTable(id="fields", zebra_stripes=True)
                yield DataTable(id="dead-letters", zebra_stripes=True)
            with TabPane("5 Alerts", id="alerts"):
                yield DataTable(id="alert-table", zebra_stripes=True)
                yield DataTable(id="audit-table", zebra_stripes=True)
            with TabPane("? Help", id="help"):
                with VerticalScroll():
                    yield Static(self._help_text(), id="help-text")
        narrow = self.size.width < COMPACT_BELOW
        yield Footer(compact=narrow, show_command_palette=not narrow)

    def on_mount(self) -> None:
        for selector, header in COLUMNS.items():
            self.query_one(selector, DataTable).add_columns(*header)
        self.set_interval(1.0 / self.rate, self.poll)
        self.poll()

    def _help_text(self) -> str:
        lines = ["Keys:"]
        for binding in self.BINDINGS:
            key = "?" if binding.key == "question_mark" else binding.key
            lines.append(f"  {key:<6} {binding.description}")
        lines += ["  enter  models view: focus the selected candidate's curve; entities view: look up",
                  "  tab    move between the entity key and id fields; esc leaves them",
                  "  ctrl+p command palette (views, theme, quit)", "",
                  "Entities: a label is joined (arrived in time), defaulted (none within the horizon: the",
                  "default label was learned), late, or pending; scored only = predicted with ingest false.", "",
                  "Read-only: actions are refused." if self.readonly else
                  "Actions ask for confirmation; the appliance applies them between two events.", "",
                  "States: connecting, connected, stale (a reply came late or was unreadable),",
                  "disconnected (the console retries at every refresh and notices a restart)."]
        return "\n".join(lines)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for number, (view, title) in enumerate(VIEWS.items(), start=1):
            key = "?" if view == "help" else str(number)
            yield SystemCommand(f"View: {title}", f"Show the {title.lower()} view ({key})",
                                lambda view=view: self.action_view(view))

    @property
    def active_view(self) -> str:
        try:
            return self.query_one(TabbedContent).active
        except NoMatches:
            return ""

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
        try:
            stats = await self.link.request("stats")
            models = await self.link.request("models", limit=10)
            if view == "alerts" or self.polls % 10 == 1:
                alerts = await self.link.request("alerts")
                audit = await self.link.request("audit", limit=30)
                self.alerts = panels.as_list(alerts.get("alerts"))
                self.audit = panels.as_list(audit.get("audit"))
            if view == "models":
                self.curve = await self.link.request("curve")
            if view == "data":
                self.data = await self.link.request("data")
            if view == "entities" and self.entity_query is not None:
                await self._look_up()
        except LinkError:
            self._show_state()
            return
        finally:
            self._polling = False
        self.stats, self.models = stats, models
        rates = panels.as_dict(stats.get("rates"))
        self.events_rate.append(panels.number(rates.get("events_per_second")))
        self.predictions_rate.append(panels.number(rates.get("predictions_per_second")))
        self.labels_rate.append(panels.number(rates.get("learns_per_second")))
        self.p99.append(panels.number(panels.as_dict(stats.get("predict_latency")).get("p99_us")))
        self.last_ok = time.monotonic()
        keys = [k for k in panels.as_list(stats.get("entity_keys")) if isinstance(k, str)]
        if keys and keys != self._keys:
            self._keys = keys
            try:
                self.query_one("#entity-key", Select).set_options([(k, k) for k in keys])
            except NoMatches:
                pass
        self._show_state()
        if not self.frozen:
            self._paint()

    async def _look_up(self) -> None:
        key, entity = self.entity_query or ("", "")
        try:
            self.entity = await self.link.request("entity", key=key, entity=entity, limit=50)
        except LinkError as exc:
            if exc.code == "unavailable" or exc.code == "bad_reply":
                raise
            self.entity = {}
            self.notify(f"{key} {entity}: {exc}", severity="warning")
            self.entity_query = None

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

    # -- painting --------------------------------------------------------------------------
    def _paint(self, force: bool = False) -> None:
        """Paint the view on screen, if what it shows changed since it was last painted."""
        view = self.active_view
        source = {"overview": (self.stats,), "models": (self.models, self.curve, self.focus_candidate,
                                                       panels.as_dict(self.stats.get("drift"))),
                  "entities": (self.entity,), "data": (self.data,), "alerts": (self.alerts, self.audit)}.get(view)
        if source is None or (not force and self._painted.get(view) == source):
            return
        try:
            getattr(self, f"_paint_{view}")()
        except NoMatches:  # the console is closing
            return
        except Exception as exc:  # an unexpected reply shape must not take the console down
            self.link.state, self.link.detail = "stale", f"could not show a reply: {exc.__class__.__name__}: {exc}"
            self._show_state()
            return
        self._painted[view] = source
        self.paints += 1

    def _paint_overview(self) -> None:
        self.query_one("#figures", Static).update(panels.overview_figures(self.stats), layout=False)
        strip = panels.stage_strip(self.stats)
        lines = strip.plain.count("\n")
        self.query_one("#stages", Static).update(strip, layout=lines != self._strip_lines)
        self._strip_lines = lines
        sparks = self.query_one("#sparks", Static)
        sparks.update(panels.sparklines([("events/s", list(self.events_rate), ",.0f"),
                                         ("predictions/s", list(self.predictions_rate), ",.0f"),
                                         ("learns/s", list(self.labels_rate), ",.0f"),
                                         ("predict p99 µs", list(self.p99), ",.0f")], sparks.size.width or self.size.width,
                                        self.p99.maxlen),
                      layout=False)

    def _paint_models(self) -> None:
        self.query_one("#serving", Static).update(panels.serving_line(self.models, self.stats))
        table = self.query_one("#leaderboard", DataTable)
        selected = table.cursor_row
        table.clear()
        for row in self._fitted(table, "#leaderboard", panels.leaderboard_rows(self.models)):
            table.add_row(*row, key=row[0])
        if table.row_count:
            table.move_cursor(row=min(selected, table.row_count - 1))
        curve = self.query_one("#curve", Static)
        width = max(20, (curve.size.width or self.size.width) - 12)
        chart, title = panels.curve_chart(self.curve, width, 8, self.focus_candidate)
        self.query_one("#curve-title", Static).update(title)
        curve.update(chart)

    def _paint_entities(self) -> None:
        self.query_one("#entity-summary", Static).update(panels.entity_summary(self.entity))
        self._fill("#entity-features", panels.entity_feature_rows(self.entity))
        self._fill("#entity-recent", panels.entity_recent_rows(self.entity))

    def _paint_data(self) -> None:
        self.query_one("#data-summary", Static).update(panels.data_summary(self.data))
        self._fill("#fields", panels.field_rows(self.data))
        self._fill("#dead-letters", panels.dead_letter_rows(self.data))

    def _paint_alerts(self) -> None:
        self._fill("#alert-table", panels.alert_rows(self.alerts))
        self._fill("#audit-table", panels.audit_rows(self.audit))

    def _fill(self, selector: str, rows: list[tuple[str, ...]]) -> None:
        """Replace a table's rows, shortened to fit its width."""
        table = self.query_one(selector, DataTable)
        table.clear()
        for row in self._fitted(table, selector, rows):
            table.add_row(*row)

    def _fitted(self, table: DataTable, selector: str, rows: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
        if not table.size.width:  # not laid out yet: paint again once it is
            self.call_after_refresh(self._paint, True)
        width = (table.size.width or self.size.width) - SCROLLBAR
        return panels.fit_columns(COLUMNS[selector], rows, width, FLEXIBLE[selector])

    def on_resize(self, event: events.Resize) -> None:
        footer = self.query_one(Footer)
        footer.compact = event.size.width < COMPACT_BELOW
        footer.show_command_palette = not footer.compact  # ctrl+p still opens it; the help says so
        self.call_after_refresh(self._paint, True)

    # -- events ----------------------------------------------------------------------------
    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self._paint(force=True)
        self.poll()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "leaderboard":
            name = str(event.data_table.get_row_at(event.cursor_row)[0])
            self.focus_candidate = None if self.focus_candidate == name else name
            self._paint(force=True)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "entity-id":
            return
        key = self.query_one("#entity-key", Select).value
        entity = event.value.strip()
        if not isinstance(key, str) or not entity:
            self.notify("choose a key and type an entity id", severity="warning")
            return
        self.entity_query = (key, entity)
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
            self._paint(force=True)

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
        table = self.query_one("#leaderboard", DataTable)
        if not table.row_count:
            self.notify("no candidates yet", severity="warning")
            return
        name = str(table.get_row_at(table.cursor_row)[0])
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
