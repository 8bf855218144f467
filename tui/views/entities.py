"""The entities view (3): look one entity up by key and id; its features with their age, its newest
predictions and how each was labelled."""

from __future__ import annotations

from typing import Any, NamedTuple

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Input, Select, Static

from .. import panels
from ..link import Link, LinkError
from .base import Table, View

FEATURES = ("feature", "value")
RECENT = ("event time", "event id", "score", "version", "label", "status", "delay s")


class EntityQuery(NamedTuple):
    key: str
    entity: str


class EntitiesView(View):
    NAME = "entities"
    TAB = "3 Entities"
    TITLE = "Entities"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lookup: EntityQuery | None = None
        self.keys: list[str] = []

    def compose(self) -> ComposeResult:
        with Horizontal(id="entity-bar"):
            yield Select([], prompt="key", id="entity-key", allow_blank=True)
            yield Input(placeholder="entity id, then Enter", id="entity-id")
        yield Static(panels.entity_summary({}), id="entity-summary")
        with Horizontal(id="entity-tables"):
            yield Table(FEATURES, id="entity-features")
            yield Table(RECENT, (1,), id="entity-recent")

    async def fetch(self, link: Link) -> None:
        if self.lookup is None:
            return
        key, entity = self.lookup
        try:
            self.snapshot.entity = await link.request("entity", key=key, entity=entity, limit=50)
        except LinkError as exc:
            if exc.code == "unavailable" or exc.code == "bad_reply":
                raise
            self.snapshot.entity = {}
            self.notify(f"{key} {entity}: {exc}", severity="warning")
            self.lookup = None

    def polled(self) -> None:
        keys = [k for k in panels.as_list(self.snapshot.stats.get("entity_keys")) if isinstance(k, str)]
        if keys and keys != self.keys:
            self.keys = keys
            self.query_one("#entity-key", Select).set_options([(k, k) for k in keys])

    def source(self) -> tuple[Any, ...]:
        return (self.snapshot.entity,)

    def paint(self) -> None:
        entity = self.snapshot.entity
        self.query_one("#entity-summary", Static).update(panels.entity_summary(entity))
        laid_out = self.query_one("#entity-features", Table).show_rows(panels.entity_feature_rows(entity))
        laid_out &= self.query_one("#entity-recent", Table).show_rows(panels.entity_recent_rows(entity))
        if not laid_out:
            self.repaint_when_laid_out()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "entity-id":
            return
        key = self.query_one("#entity-key", Select).value
        entity = event.value.strip()
        if not isinstance(key, str) or not entity:
            self.notify("choose a key and type an entity id", severity="warning")
            return
        self.lookup = EntityQuery(key, entity)
        self.post_message(self.PollNow())
