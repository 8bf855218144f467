"""The alerts and audit view (5): drift alerts, and every operator or automatic action."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult

from .. import panels
from ..link import Link
from .base import Table, View

ALERTS = ("#", "event time", "kind", "subject", "action")
AUDIT = ("#", "event time", "action", "version", "by", "reason")


class AlertsView(View):
    NAME = "alerts"
    TAB = "5 Alerts"
    TITLE = "Alerts and audit"

    def compose(self) -> ComposeResult:
        yield Table(ALERTS, (3, 4), id="alert-table")
        yield Table(AUDIT, (5,), id="audit-table")

    async def fetch(self, link: Link) -> None:
        alerts = await link.request("alerts")
        audit = await link.request("audit", limit=30)
        self.snapshot.alerts = panels.as_list(alerts.get("alerts"))
        self.snapshot.audit = panels.as_list(audit.get("audit"))

    def source(self) -> tuple[Any, ...]:
        return (self.snapshot.alerts, self.snapshot.audit)

    def paint(self) -> None:
        laid_out = self.query_one("#alert-table", Table).show_rows(panels.alert_rows(self.snapshot.alerts))
        laid_out &= self.query_one("#audit-table", Table).show_rows(panels.audit_rows(self.snapshot.audit))
        if not laid_out:
            self.repaint_when_laid_out()
