"""Admission: decisions from event time and ids alone, so a batch can be admitted before it is settled."""

from __future__ import annotations

import pytest

from appliance.config.file import EventSchema, LabelPolicy
from appliance.engine.admission import Admission, EventAdmitted, Expiry, LabelAdmitted, Refused
from appliance.engine.core import Engine
from appliance.engine.items import EventItem
from appliance.features.partitions import read_then_fold
from appliance.ingest.events import Event, Label
from tests.conftest import START, config_with, items, mixed_stream


def event(event_id: str, ts: float, label=None) -> Event:
    return Event(event_id, ts, {}, label, {})


def test_refusals_say_which_counter_and_why():
    admission = Admission(EventSchema(allowed_lateness=60.0), LabelPolicy(horizon=600.0))
    assert isinstance(admission.event(event("a", START), served=False, ingest=True), EventAdmitted)
    late = admission.event(event("b", START - 61), served=False, ingest=True)
    assert late == Refused("late_events", late.reason) and "61s behind the watermark" in late.reason
    assert admission.event(event("a", START + 1), served=False, ingest=True) == Refused(
        "duplicates", 'duplicate event id "a"')
    future = admission.event(event("c", START + 10 * 365 * 86400.0), served=False, ingest=True)
    assert future.counter == "future_events" and future.reason.startswith("future: ")
    # served over the socket and scored only: logged however late, never waiting for a label
    served = admission.event(event("d", START - 3600), served=True, ingest=False)
    assert isinstance(served, EventAdmitted) and not served.waits and admission.watermark == START


def test_labels_join_wait_early_or_come_late_and_the_horizon_expires_in_arrival_order():
    admission = Admission(EventSchema(allowed_lateness=60.0), LabelPolicy(horizon=100.0))
    for i in range(3):
        assert admission.event(event(f"e{i}", START + i), served=False, ingest=True).waits
    joined = admission.label(Label("e1", START + 5, True))
    assert joined == LabelAdmitted(START + 5, True, False, 0, None)
    early = admission.label(Label("x", START + 6, False))
    assert (early.joined, early.late) == (False, False) and "x" in admission.early
    taken = admission.event(event("x", START + 7), served=False, ingest=True)
    assert (taken.label, taken.early, taken.waits) == (False, True, False) and "x" not in admission.early
    admission.label(Label("orphan", START + 8, True))
    expired = admission.event(event("e9", START + 150), served=False, ingest=True)
    assert expired.expiry == Expiry(["e0", "e2"], 1)  # and the early label that met no event
    late = admission.label(Label("e0", START + 151, True))
    assert (late.joined, late.late) == (False, True)


def test_as_data_it_resumes_where_it_was():
    admission = Admission(EventSchema(allowed_lateness=60.0), LabelPolicy(horizon=100.0))
    admission.event(event("a", START), served=False, ingest=True)
    admission.label(Label("b", START + 1, True))
    admission.event(event("c", START + 200), served=False, ingest=True)  # "a" expires
    copy = Admission(EventSchema(), LabelPolicy())
    copy.load_data(admission.to_data(), admission.waiting.items())
    assert copy.to_data() == admission.to_data() and copy.waiting == admission.waiting
    assert copy.label(Label("a", START + 201, True)).late


@pytest.mark.parametrize("batch", [1, 64, 500])
def test_a_batch_admitted_whole_then_settled_with_aggregates_read_elsewhere_equals_one_item_at_a_time(batch):
    config = config_with({"challenger": [{"name": "tree", "spec": "tree.HoeffdingTreeClassifier()"}]},
                         {"drift_features": ["amount"], "on_concept_drift": "challenger", "alert_cooldown": "1h",
                          "drift_warmup": 100})
    stream = []
    for i, item in enumerate(items(config, mixed_stream())):
        stream.append(item)
        if i % 41 == 0 and isinstance(item, EventItem):  # scored only, as a predict with "ingest": false
            stream.append(EventItem("test", None, Event(f"only{i}", item.event.ts, item.event.values, None, item.event.raw), None, False))

    straight = Engine(config)
    straight_rows: dict[str, list] = {}
    for item in stream:
        straight.process(item)
    for table, new in straight.take_rows().items():
        straight_rows.setdefault(table, []).extend(new)

    staged = Engine(config)
    layouts = staged.space.layouts
    elsewhere = staged.space.new_store()  # entity state kept apart from the engine, as a partition keeps it
    for first in range(0, len(stream), batch):
        chunk = stream[first:first + batch]
        verdicts = [staged.admit(item) for item in chunk]  # the whole batch before any feature
        aggregates = []
        for item, verdict in zip(chunk, verdicts):
            if isinstance(verdict, EventAdmitted) and item.served is None:
                values = item.event.values
                keys = [key for key in layouts if values.get(key) is not None]
                pieces = iter(read_then_fold(layouts, elsewhere, keys, values, item.event.ts, fold=item.ingest))
                aggregates.append([next(pieces) if values.get(key) is not None else None for key in layouts])
            else:
                aggregates.append(None)
        for item, verdict, aggregate in zip(chunk, verdicts, aggregates):
            staged.settle(item, verdict, aggregate)
    staged_rows = staged.take_rows()

    assert straight.drift.alerts > 0 and len(straight.model.candidates) > 2  # a challenger was backfilled
    counts = straight.counts
    assert min(counts[name] for name in ("duplicates", "late_events", "labels_early", "labels_late",
                                         "predictions_expired", "labels_joined")) > 0, counts
    assert staged.counts == counts
    for table in ("predictions", "labels", "metrics", "dead_letters", "late_labels", "events"):
        assert staged_rows[table] == straight_rows[table], table
    strip = lambda rows: [{**row, "wall_ts": None} for row in rows]  # noqa: E731
    for table in ("alerts", "audit"):
        assert strip(staged_rows[table]) == strip(straight_rows[table]), table
    assert staged.checkpoint()["pending"] == straight.checkpoint()["pending"]
    assert staged.admission.to_data() == straight.admission.to_data()
