"""`appliance console`: the operator's view of a running appliance, through its socket only.

Views (number keys): 1 overview, 2 models, 3 alerts and audit, ? help. Actions, each confirmed:
`r` roll back, `c` promote the challenger selected in the models view, `z` pause or resume automatic
publication; `--readonly` refuses them. `p` freezes the display, `s` saves a screenshot. The data
is polled from a timer at a fixed rate (`--rate`, default 2 Hz); a poll never overlaps the previous
one, and a slow or absent appliance only changes the connection state shown at the top.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Footer, Header, Label, Sparkline, Static, TabbedContent, TabPane

from .link import Link, LinkError

HISTORY = 240  # samples kept for the sparklines (two minutes at the default rate)
STATE_STYLE = {"connecting": "yellow", "connected": "green", "stale": "dark_orange", "disconnected": "red"}


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


class Console(App):
    """The appliance, live."""

    TITLE = "appliance console"
    CSS = """
    #state { height: 1; padding: 0 1; }
    #figures { height: auto; }
    Sparkline { height: 3; margin: 0 1; }
    #confirm { width: 60; height: auto; border: thick $warning; background: $surface; padding: 1 2; }
    Confirm { align: center middle; }
    DataTable { height: 1fr; }
    """
    BINDINGS = [
        Binding("1", "view('overview')", "Overview"),
        Binding("2", "view('models')", "Models"),
        Binding("3", "view('alerts')", "Alerts"),
        Binding("question_mark", "view('help')", "Help"),
        Binding("r", "rollback", "Roll back"),
        Binding("c", "promote_challenger", "Promote challenger"),
        Binding("z", "toggle_publishing", "Pause/resume publishing"),
        Binding("p", "freeze", "Freeze display"),
        Binding("s", "screenshot", "Screenshot"),
        Binding("q", "quit", "Quit"),
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
        self.events_rate: deque = deque(maxlen=HISTORY)
        self.labels_rate: deque = deque(maxlen=HISTORY)
        self.polls = 0
        self.last_ok = 0.0
        self._polling = False

    # -- layout ----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("connecting...", id="state")
        with TabbedContent(initial="overview"):
            with TabPane("1 Overview", id="overview"):
                yield Static(id="figures")
                yield Label(" events/s")
                yield Sparkline([0], id="events-spark")
                yield Label(" labels learned/s")
                yield Sparkline([0], id="labels-spark")
            with TabPane("2 Models", id="models"):
                yield Static(id="serving")
                yield DataTable(id="leaderboard", cursor_type="row", zebra_stripes=True)
            with TabPane("3 Alerts", id="alerts"):
                yield DataTable(id="alert-table", zebra_stripes=True)
                yield DataTable(id="audit-table", zebra_stripes=True)
            with TabPane("? Help", id="help"):
                yield Static(self._help_text(), id="help-text")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#leaderboard", DataTable).add_columns(
            "candidate", "role", "recent", "overall", "labels", "vs champion", "learns", "spec")
        self.query_one("#alert-table", DataTable).add_columns("#", "event time", "kind", "subject", "action")
        self.query_one("#audit-table", DataTable).add_columns("#", "event time", "action", "version", "by", "reason")
        self.set_interval(1.0 / self.rate, self.poll)
        self.poll()

    def _help_text(self) -> str:
        lines = ["Keys:"]
        for binding in self.BINDINGS:
            key = "?" if binding.key == "question_mark" else binding.key
            lines.append(f"  {key:<4} {binding.description}")
        lines.append("  ctrl+p  command palette (views, theme, quit)")
        lines.append("")
        lines.append("Read-only: actions are refused." if self.readonly else
                     "Actions ask for confirmation; they are applied by the appliance between two events.")
        return "\n".join(lines)

    # -- polling ---------------------------------------------------------------------------
    def poll(self) -> None:
        """Start a poll unless one is still running (a slow appliance slows the display, nothing else)."""
        if self._polling:
            return
        self._polling = True
        self.run_worker(self._poll(), group="poll")

    async def _poll(self) -> None:
        self.polls += 1
        try:
            stats = await self.link.request("stats")
            models = await self.link.request("models", limit=10)
            alerts = await self.link.request("alerts")
            audit = await self.link.request("audit", limit=30)
        except LinkError:
            self._show_state()
            return
        finally:
            self._polling = False
        self.stats, self.models = stats, models
        self.alerts = alerts.get("alerts") if isinstance(alerts.get("alerts"), list) else []
        self.audit = audit.get("audit") if isinstance(audit.get("audit"), list) else []
        rates = stats.get("rates") if isinstance(stats.get("rates"), dict) else {}
        self.events_rate.append(_float(rates.get("events_per_second")))
        self.labels_rate.append(_float(rates.get("labels_per_second")))
        self.last_ok = time.monotonic()
        self._show_state()
        if not self.frozen:
            self._paint()

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
        self.query_one("#state", Static).update(text)

    def _paint(self) -> None:
        try:
            self._paint_overview()
            self._paint_models()
            self._paint_alerts()
        except Exception as exc:  # an unexpected reply shape must not take the console down
            self.link.state, self.link.detail = "stale", f"could not show a reply: {exc.__class__.__name__}"
            self._show_state()

    def _paint_overview(self) -> None:
        stats = self.stats
        counts = stats.get("counts") or {}
        model = stats.get("model") or {}
        served = model.get("served") or {}
        rates = stats.get("rates") or {}
        table = Table.grid(padding=(0, 2))
        for _ in range(4):
            table.add_column()
        rows = [
            ("events/s", _fmt(rates.get("events_per_second"), ",.0f"), "labels/s", _fmt(rates.get("labels_per_second"), ",.0f")),
            ("events", _fmt(counts.get("events"), ",d"), "predictions", _fmt(counts.get("predictions"), ",d")),
            ("labels joined", _fmt(counts.get("labels_joined"), ",d"), "pending labels", _fmt(stats.get("pending_labels"), ",d")),
            ("label join rate", _fmt(stats.get("label_join_rate"), ".1%"), "dead letters", _fmt(counts.get("dead_letters"), ",d")),
            ("late events", _fmt(counts.get("late_events"), ",d"), "inbox lag", _fmt(stats.get("inbox_lag_bytes"), ",d") + " B"),
            ("served version", str(model.get("served_version", "-")), "publishing", str(model.get("publishing", "-"))),
            ("served ROC AUC (recent)", _fmt(served.get("roc_auc_window"), ".4f"), "served log loss", _fmt(served.get("log_loss"), ".4f")),
            ("champion", str(model.get("champion", "-")), "drift alerts", _fmt((stats.get("drift") or {}).get("alerts"), ",d")),
            ("watermark", str(stats.get("watermark") or "-"), "uptime", _fmt(stats.get("uptime_seconds"), ",.0f") + " s"),
        ]
        for row in rows:
            table.add_row(Text(row[0], style="dim"), Text(row[1], style="bold"), Text(row[2], style="dim"),
                          Text(row[3], style="bold"))
        self.query_one("#figures", Static).update(table)
        self.query_one("#events-spark", Sparkline).data = list(self.events_rate) or [0]
        self.query_one("#labels-spark", Sparkline).data = list(self.labels_rate) or [0]

    def _paint_models(self) -> None:
        models = self.models
        probation = models.get("probation")
        line = (f" serving v{models.get('served')} (champion {models.get('champion')}), publication "
                f"{models.get('publishing')}, {models.get('total_versions')} versions")
        if isinstance(probation, dict):
            line += f"; v{probation.get('version')} on probation: {probation.get('labels')}/{probation.get('needed')} labels"
        self.query_one("#serving", Static).update(line)
        table = self.query_one("#leaderboard", DataTable)
        selected = table.cursor_row
        table.clear()
        for row in models.get("leaderboard") or []:
            metrics = row.get("metrics") or {}
            primary = "roc_auc" if "roc_auc" in metrics else "mae"
            duel = row.get("versus_champion") or {}
            versus = "-" if duel.get("challenger") is None or duel.get("champion") is None else (
                f"{duel['challenger']:.4f} vs {duel['champion']:.4f} ({duel.get('labels', 0):,})")
            table.add_row(str(row.get("name")), str(row.get("role")), _fmt(metrics.get(primary + "_window"), ".4f"),
                          _fmt(metrics.get(primary), ".4f"), _fmt(row.get("labels_scored"), ",d"), versus,
                          "yes" if row.get("learns") else "no", str(row.get("spec"))[:60], key=str(row.get("name")))
        if table.row_count:
            table.move_cursor(row=min(selected, table.row_count - 1))

    def _paint_alerts(self) -> None:
        from appliance.timeutil import format_timestamp

        def when(value: Any) -> str:
            return format_timestamp(value) if isinstance(value, (int, float)) else "-"

        alerts = self.query_one("#alert-table", DataTable)
        alerts.clear()
        for alert in self.alerts:
            alerts.add_row(str(alert.get("id")), when(alert.get("event_ts")), str(alert.get("kind")),
                           str(alert.get("subject")), str(alert.get("action")))
        audit = self.query_one("#audit-table", DataTable)
        audit.clear()
        for entry in self.audit:
            audit.add_row(str(entry.get("id")), when(entry.get("event_ts")), str(entry.get("action")),
                          "-" if entry.get("version") is None else f"v{entry['version']}", str(entry.get("actor")),
                          str(entry.get("reason"))[:100])

    # -- actions ---------------------------------------------------------------------------
    def action_view(self, name: str) -> None:
        self.query_one(TabbedContent).active = name

    def action_freeze(self) -> None:
        self.frozen = not self.frozen
        self._show_state()
        if not self.frozen:
            self._paint()

    def action_screenshot(self) -> None:
        path = self.save_screenshot()
        self.notify(f"saved {path}")

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


def _float(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _fmt(value: Any, spec: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)
