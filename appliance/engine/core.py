"""The engine: features, prediction, delayed-label learning and metrics for a stream of events.

The dataflow owns one `Engine` and feeds it parsed items in arrival order. For each event the engine
computes features from entity state as it was before the event, scores the event with the served
model (and the learner, in shadow), logs the prediction with its feature vector, folds the event
into entity state, and learns when the label arrives, on the logged vector. Everything is a function
of the items and their event times, so a replay at full speed gives the same results as live.

Items (`items.EventItem`, `LabelItem`, `DeadItem`, `ControlItem`) are built by the dataflow's parse
step; a `ControlItem` carries an operator's command (`commands.Command`), which `EngineCommands`
applies between two events.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import orjson

from appliance.config.file import Config
from appliance.config.model_spec import DEFAULT_MODELS
from appliance.engine.admission import Admission, EventAdmitted, Expiry, LabelAdmitted, Refused
from appliance.engine.commands import EngineCommands, model_row
from appliance.engine.items import ControlItem, EventItem, Item, LabelItem, Served
from appliance.engine.label_join import LabelJoin, Pending, Scored
from appliance.engine.rows import as_prediction, empty_rows, label_row, late_label_row, metric_row, prediction_row
from appliance.errors import ConfigError
from appliance.features.category_stats import CategoryStats
from appliance.features.entity_codec import decode_state, encode_state
from appliance.features.label_means import LabelMeans
from appliance.features.label_rates import LabelRates
from appliance.features.space import FeatureSpace
from appliance.ingest.events import Event, Label
from appliance.learning.drift import DriftMonitor
from appliance.learning.online_model import OnlineModel
from appliance.learning.report import model_summary
from appliance.learning.versions import Decision, Published
from appliance.storage import registry
from appliance.storage.payloads import PayloadCodec
from appliance.storage.rows import SourceIds, VectorCodec, names_row
from appliance.storage.snapshot import pack_checkpoint, unpack_checkpoint
from appliance.timeutil import format_timestamp

METRIC_EVERY = 200  # labels between two rows of metric history
RECENT_AUDIT = 100  # audit rows kept in memory for the console
RECENT_DEAD = 50  # dead letters kept in memory for the console (all of them are in the store)
CURVE_POINTS = 500  # points of metric history kept in memory (one every METRIC_EVERY labels)

COUNTERS = ("events", "predictions", "labels", "labels_joined", "labels_immediate", "labels_early",
            "labels_late", "labels_orphaned", "labels_defaulted", "predictions_expired",
            "dead_letters", "late_events", "duplicates", "future_events",
            "labels_early_dropped")


Verdict = EventAdmitted | LabelAdmitted | Refused | None  # None: a command or a dead letter


class Engine:
    """Owns entity state, the online model and pending labels; emits rows for the store."""

    def __init__(self, config: Config, on_publish: Callable[[Published], None] | None = None) -> None:
        self.config = config
        self.task = config.model.task
        self.space = FeatureSpace.for_config(config)
        self.vectors = VectorCodec(self.space.names)  # logged vectors: packed, names once per version
        self.payloads = PayloadCodec(tuple(self.space.layouts), config.event.id_field, config.event.time_field)
        self.sources = SourceIds()  # logged events' sources: an id each, the text once
        self.entities = self.space.new_store()
        # True: entity state is read and folded by worker processes (`engine.partitions`), which hand
        # back what each batch changed (`take_entity_changes`); `entities` then keeps their states
        self.partitioned = False
        if config.features.label_rates:
            self.space.label_rates = LabelRates(config.features.categorical, self.task)
        if config.features.label_means:
            self.space.label_means = LabelMeans(config.event.keys, self.task)
        self.categories = CategoryStats(self.space)
        self.model = OnlineModel(config.model, config.model.spec or DEFAULT_MODELS[self.task], config.lifecycle)
        self.drift = DriftMonitor(config.lifecycle, self.task)
        unknown = [name for name in config.lifecycle.drift_features if name not in self.space.names]
        if unknown:
            raise ConfigError(f"[lifecycle] drift_features: {', '.join(unknown)} not among the features "
                              f"({', '.join(self.space.names[:8])}, ...)")
        self.alert_seq = 0
        self.admission = Admission(config.event, config.labels)
        self.join = LabelJoin(config.labels)
        self.watermark = -math.inf  # as of the last item settled (admission's may be ahead, within a batch)
        self.offsets: dict[str, int] = {}
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.dirty: set[tuple[str, str]] = set()
        self.evicted: set[tuple[str, str]] = set()
        # (key, entity) changed or evicted since the online store's last publication; None: not published
        self.touched: set[tuple[str, str]] | None = None
        self.sweep_ticks: dict[str, int] = {}
        self.rows: dict[str, list[dict]] = empty_rows()
        self._restored_attributes: dict[str, int] = {}
        self.audit_seq = 0
        self.recent_audit: deque = deque(maxlen=RECENT_AUDIT)
        self.recent_dead: deque = deque(maxlen=RECENT_DEAD)
        self.curve: deque = deque(maxlen=CURVE_POINTS)
        self.last_import = 0  # the newest staged import registered (checkpointed with the catalog)
        self.on_publish = on_publish
        self.commands = EngineCommands(self)
        self.rows["models"].append(model_row(self.model.served))
        self.rows["feature_names"].append(names_row(self.vectors))
        self.audit("serve", self.model.served.version, "the initial, untrained version", "appliance")

    # -- the per-item path -------------------------------------------------------------------
    def process(self, item: Item) -> None:
        """Apply one parsed item; rows for the store accumulate in `self.rows`."""
        self.settle(item, self.admit(item))

    def admit(self, item: Item) -> Verdict:
        """Decide the item's admission (`admission.Admission`: from event time and ids, before any
        feature is read). The items of a batch can all be admitted before the first is settled."""
        kind = item.__class__
        if kind is EventItem:
            return self.admission.event(item.event, item.served is not None, item.ingest)
        if kind is LabelItem:
            return self.admission.label(item.label)
        return None

    def settle(self, item: Item, verdict: Verdict, aggregates: list[dict[str, float] | None] | None = None) -> None:
        """Apply an admitted item, in admission order. `aggregates`: an event's entity aggregates, read
        (and the event folded) where its entities' state lives; None: from `self.entities`."""
        kind, source, offset = item.__class__, item.source, item.offset
        if verdict.__class__ is Refused:
            self.counts[verdict.counter] += 1
            self._dead(source, offset, orjson.dumps(_refused_payload(item)).decode(), verdict.reason)
        elif kind is EventItem:
            self._on_event(item.event, item.served, item.ingest, source, offset, verdict, aggregates)
        elif kind is LabelItem:
            self._on_label(item.label, verdict)
        elif kind is ControlItem:
            self.commands.apply(item.command)
        else:
            self._dead(source, offset, item.payload, item.reason)
        if offset is not None:
            self.offsets[source] = offset

    def _on_event(self, event: Event, served: Served | None, ingest: bool, source: str, offset: int | None,
                  admitted: EventAdmitted, aggregates: list[dict[str, float] | None] | None) -> None:
        # A scored-only event (`"ingest": false`) is not part of the stream: it never moves event time
        # or changes state, and once scored over the socket (`served`: features computed then) it is
        # logged however far event time has moved on since.
        model = self.model
        if served is not None:
            x = served.x
        elif aggregates is None:
            x = self.space.compute(event.values, event.ts, self.entities)
        else:
            x = self.space.compute(event.values, event.ts, None, aggregates=aggregates)
        # Every candidate's prediction, for learning when the label comes; a scored-only event is never
        # learned from, so it needs the champion learner's alone (its row's `learner_score`).
        shadow = model.shadow(x) if ingest else None
        if served is None:  # following, the served score is the learner's
            y_learner = shadow.scores[model.champion] if shadow is not None else model.predict(model.learner, x)
            y_served = y_learner if model.following else model.predict(model.served.model, x)
            version = model.served.version
        else:
            y_served, version = as_prediction(served.score, self.task), served.version
            if shadow is not None:
                y_learner = shadow.scores[model.champion]
            elif model.following and version == model.served.version:
                # scored only, by a server serving the learner this version follows (its copy after a
                # batch, `OnlineModel.view`): the learner's score is the one served, as on the stream
                y_learner = y_served
            else:
                y_learner = model.predict(model.learner, x)
        features = self.vectors.encode(x)  # as logged, and as learned from when the label comes
        if ingest:
            self._ingest(event)
        self.counts["predictions"] += 1
        self._log_event(event, source, offset, ingest)
        self.watermark = admitted.watermark
        if admitted.advanced and not self.partitioned:
            self._sweep()
        seq = self.counts["predictions"]
        self.rows["predictions"].append(prediction_row(event, seq, features, y_served, y_learner, version,
                                                       "stream" if served is None else "socket", self.task))
        if shadow is None:  # scored only: not part of the stream, so nothing is learned from it
            self._expired(admitted.expiry)
            return
        if self.drift.features:
            for alert in self.drift.observe_features(x, event.ts):
                self._on_alert(alert, self.config.lifecycle.on_data_drift)
        means = self.space.label_means
        scored = Scored(event.event_id, seq, event.ts, x, shadow, y_served, version,
                        None if means is None else means.key_values(event.values))
        if admitted.waits:
            self.join.add(Pending.pack(scored, features))
        else:
            self._learn(scored, admitted.label, event.ts, "early" if admitted.early else "immediate")
        self._expired(admitted.expiry)

    def _ingest(self, event: Event) -> None:
        """Count an event into the stream and fold it into its entities (unless their worker did)."""
        if not self.partitioned:
            self.space.update(event.values, event.ts, self.entities)
            touched = self.touched
            for key in self.space.layouts:
                entity = event.values.get(key)
                if entity is not None:
                    self.dirty.add((key, entity))
                    if touched is not None:
                        touched.add((key, entity))
        self.categories.observe(event.values)
        self.counts["events"] += 1

    def take_entity_changes(self, states: list[tuple[str, str, bytes]], evicted: list[tuple[str, str]]) -> None:
        """Keep what a batch changed in the entity workers (`engine.partitions`): the states they
        evicted, then the ones they changed, as they are after the batch."""
        entities, touched = self.entities, self.touched
        for pair in evicted:
            entities[pair[0]].pop(pair[1], None)
            self.dirty.discard(pair)
            self.evicted.add(pair)
            if touched is not None:
                touched.add(pair)
        for key, entity, blob in states:
            entities[key][entity] = decode_state(blob)
            pair = (key, entity)
            self.dirty.add(pair)
            if touched is not None:
                touched.add(pair)

    def _log_event(self, event: Event, source: str, offset: int | None, ingest: bool) -> None:
        self.rows["events"].append({"event_id": event.event_id, "seq": self.counts["predictions"], "ts": event.ts,
                                    "source": self.sources.id_of(source), "offset": offset, "ingested": int(ingest),
                                    "payload": self.payloads.encode(event.raw, event.event_id, event.ts)})
        if self.payloads.new_shapes:
            self.rows["payload_shapes"] += self.payloads.take_shapes()
        if self.sources.new_rows:
            self.rows["sources"] += self.sources.take_rows()

    def _sweep(self) -> None:
        """Evict idle entities on an event-time schedule (a function of the watermark alone)."""
        for pair in self.space.sweep(self.entities, self.watermark, self.sweep_ticks):
            self.dirty.discard(pair)
            self.evicted.add(pair)
            if self.touched is not None:
                self.touched.add(pair)

    def _on_label(self, label: Label, admitted: LabelAdmitted) -> None:
        self.counts["labels"] += 1
        self.watermark = admitted.watermark
        if admitted.joined:
            pending = self._take(label.event_id)
            self._learn(pending.unpack(), label.value, label.ts if label.ts is not None else self.watermark, "joined")
        elif admitted.late:
            self.counts["labels_late"] += 1
            self.rows["late_labels"].append(late_label_row(label.event_id, label.ts, label.value))
        else:
            self.counts["labels_early"] += 1
            self.counts["labels_early_dropped"] += admitted.dropped
        self._expired(admitted.expiry)

    def _learn(self, pending: Scored, y: Any, label_ts: float, status: str) -> None:
        delay = max(0.0, label_ts - pending.ts)
        self.counts["labels_" + ("joined" if status == "early" else status)] += 1
        if status in ("joined", "early"):
            self.join.record_delay(delay)
        decisions = self.model.learn(pending.x, y, pending.shadow, pending.y_served, self.watermark)
        if self.space.label_rates is not None:
            self.space.label_rates.learn(pending.x, y)
        if self.space.label_means is not None and pending.keys is not None:
            self.space.label_means.learn(pending.keys, y)
        self.rows["labels"].append(label_row(pending.seq, pending.event_id, label_ts, y, status))
        alert = self.drift.observe_error(y, pending.y_served, self.watermark, pending.version)
        if alert is not None:
            self._on_alert(alert, self.config.lifecycle.on_concept_drift)
        if self.model.n_learned % METRIC_EVERY == 0:
            row, point = metric_row(self.model, self.watermark)
            self.rows["metrics"].append(row)
            self.curve.append(point)
        self.apply(decisions, "policy")

    def apply(self, decisions: list[Decision], actor: str) -> None:
        """Log what the model decided: registry rows, the audit trail, and who to tell."""
        for decision in decisions:
            self.audit(decision.action, decision.version, decision.reason, actor)
            if decision.new_version is not None:
                self.log_version(decision.new_version)
            if decision.switched:
                if decision.action != "publish":
                    self.drift.reset_concept()
                if self.on_publish is not None:
                    self.on_publish(self.model.served)

    def _on_alert(self, alert: dict, action: str) -> None:
        """Store a drift alert; with the "challenger" action, start a fresh challenger."""
        self.alert_seq += 1
        taken = "alert only"
        if action == "challenger":
            since = alert["evidence"].get("since_change") if alert["kind"] == "concept" else None
            decision = self.model.start_challenger(f"{alert['kind']} drift on {alert['subject']}", since)
            if decision is None:
                taken = "none: a fresh challenger is already competing"
            else:
                scored = self.model.backfill(decision.candidate, self.join.pending.values())
                self.join.touch_all()  # repacked with the new shadow predictions
                taken = f"{decision.candidate} started"
                self.apply([replace(decision, reason=f"{decision.reason}; it and the champion scored the "
                                                     f"{scored} predictions waiting for labels")], "policy")
        row = {**alert, "id": self.alert_seq, "evidence": orjson.dumps(alert["evidence"]).decode(), "action": taken}
        self.rows["alerts"].append(row)
        self.drift.recent.append({**alert, "id": self.alert_seq, "action": taken})

    def _expired(self, expiry: Expiry | None) -> None:
        """Apply what admission expired after an item: each expired prediction learns the default
        label, if the policy has one."""
        if expiry is None:
            return
        join = self.join
        self.counts["labels_orphaned"] += expiry.orphans
        for event_id in expiry.ids:
            pending = self._take(event_id)
            self.counts["predictions_expired"] += 1
            if join.default is not None:
                y = bool(join.default) if self.task == "classification" else join.default
                self._learn(pending.unpack(), y, pending.ts + join.horizon, "defaulted")

    def _take(self, event_id: str) -> Pending:
        pending = self.join.take(event_id)
        if pending is None:  # admission and the join move in step: this is a bug, not bad input
            raise RuntimeError(f'admission let "{event_id}" leave the label join, which does not hold it')
        return pending

    def _dead(self, source: str, offset: int | None, payload: str, reason: str) -> None:
        self.counts["dead_letters"] += 1
        row = {"source": source, "offset": offset, "reason": reason, "payload": payload[:65536],
               "watermark": self.event_time()}
        self.rows["dead_letters"].append(row)
        self.recent_dead.append({**row, "payload": payload[:300]})

    def event_time(self) -> float | None:
        """The watermark, None before the first event."""
        return None if self.watermark == -math.inf else self.watermark

    def log_version(self, published: Published) -> None:
        """Write a new version to the registry (with the next rows)."""
        self.rows["models"].append(model_row(published))

    # -- the audit trail -------------------------------------------------------------------
    def audit(self, action: str, version: int | None, reason: str, actor: str) -> None:
        """Write one change to serving or to the candidates to the audit trail, with who and why."""
        self.audit_seq += 1
        row = {"id": self.audit_seq, "event_ts": self.event_time(), "wall_ts": time.time(), "action": action,
               "version": version, "reason": reason, "actor": actor}
        self.rows["audit"].append(row)
        self.recent_audit.append(row)  # for the console (the store has them all)

    def load_recent_audit(self, db: Any) -> None:
        """After a restore: the newest audit rows are the store's, not this process's first row."""
        self.recent_audit.clear()
        self.recent_audit.extend(reversed(registry.audit(db, limit=self.recent_audit.maxlen or 100)))

    def attach_attributes(self, db: Any) -> None:
        """After a restore: the attribute tables the checkpoint was scoring with, then any newer ones."""
        self.commands.attach_attributes(db, self._restored_attributes)

    # -- rows ------------------------------------------------------------------------------
    def take_rows(self) -> dict[str, list[dict]]:
        """Return the rows produced since the last call and start a new set."""
        rows, self.rows = self.rows, empty_rows()
        return rows

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """Return everything needed to resume exactly here; entity state only where it changed.

        The engine's core state is one versioned blob of plain data (`snapshot`), each entity state
        the bytes of `entity_codec`, each pending prediction its packed row (`label_join`).
        """
        entities = [(key, entity, encode_state(self.entities[key][entity]))
                    for key, entity in self.dirty if entity in self.entities[key]]
        evicted = [pair for pair in self.evicted if pair[1] not in self.entities[pair[0]]]
        self.dirty, self.evicted = set(), set()
        return {"offsets": dict(self.offsets), "engine": pack_checkpoint(self._core_data()), "entities": entities,
                "evicted": evicted, "watermark": self.watermark, "pending": self.join.changes(),
                "models_kept": self.model.needed_versions()}

    def _core_data(self) -> dict[str, Any]:
        """The engine's own state as named plain fields (the parts' `to_data`)."""
        admission = self.admission.to_data()  # as of the last item settled: a batch is settled whole first
        join = {**self.join.to_data(), "next_early_sweep": admission["next_early_sweep"], "early": admission["early"]}
        return {"model": self.model.to_data(), "join": join, "watermark": self.watermark,
                "counts": self.counts, "recently_expired": admission["recently_expired"], "offsets": self.offsets,
                "sweep_ticks": self.sweep_ticks, "categories": self.categories.to_data(),
                "attributes": {name: table.version for name, table in self.space.attributes.items()},
                "audit_seq": self.audit_seq, "last_import": self.last_import, "drift": self.drift.to_data(),
                "alert_seq": self.alert_seq, "curve": list(self.curve), "recent_dead": list(self.recent_dead),
                "label_rates": None if self.space.label_rates is None else self.space.label_rates.to_data(),
                "label_means": None if self.space.label_means is None else self.space.label_means.to_data()}

    def restore(self, engine_blob: bytes, entity_rows: list[tuple[str, str, bytes]],
                pending_rows: Iterable[tuple[str, float, bytes]] = ()) -> None:
        """Resume from a checkpoint written by `checkpoint` (only ever from the local store).

        `pending_rows` are the store's pending predictions (event id, ts, packed) in arrival order.
        """
        core = unpack_checkpoint(engine_blob)
        self.model.load_data(core["model"])
        self.join.load_data(core["join"])
        self.join.load(pending_rows)
        self.watermark = core["watermark"]
        self.admission.load_data({**core["join"], "watermark": core["watermark"],
                                  "recently_expired": core["recently_expired"]},
                                 ((event_id, pending.ts) for event_id, pending in self.join.pending.items()))
        self.counts = {**dict.fromkeys(COUNTERS, 0), **core["counts"]}
        self.offsets, self.sweep_ticks = core["offsets"], core["sweep_ticks"]
        self.categories.load_data(core["categories"])
        self._restored_attributes = core["attributes"]
        self.audit_seq, self.last_import, self.alert_seq = core["audit_seq"], core["last_import"], core["alert_seq"]
        self.drift.load_data(core["drift"])
        self.curve = deque(core["curve"], maxlen=CURVE_POINTS)
        self.recent_dead = deque(core["recent_dead"], maxlen=RECENT_DEAD)
        rates = core["label_rates"]
        if self.space.label_rates is not None and rates is not None and tuple(rates["fields"]) == self.space.label_rates.fields:
            self.space.label_rates = LabelRates.from_data(rates)  # else (turned on, or other fields): no labels yet
        means = core.get("label_means")  # absent from a checkpoint written before the key
        if self.space.label_means is not None and means is not None and tuple(means["keys"]) == self.space.label_means.keys:
            self.space.label_means = LabelMeans.from_data(means)  # else (turned on, or other keys): no labels yet
        for key, entity, blob in entity_rows:
            if key in self.entities:
                state = decode_state(blob)
                if len(state[0]) != self.space.layouts[key].size:
                    raise ConfigError(f'entity state for "{key}" in the store has another layout (another '
                                      "allowed_lateness or windows); start with --fresh")
                self.entities[key][entity] = state
        self.rows = empty_rows()
        self.rows["feature_names"].append(names_row(self.vectors))
        self.apply(self.model.reconcile(self.config.model, self.config.lifecycle), "config")

    # -- stats -----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Return counters, label-join figures and model metrics."""
        return {
            "counts": dict(self.counts),
            "watermark": None if self.watermark == -math.inf else format_timestamp(self.watermark),
            "pending_labels": len(self.join.pending),
            "label_join_rate": _join_rate_of(self.counts),
            "early_labels": len(self.admission.early),
            "label_delay_seconds": self.join.delay_quantiles(),
            "entities": self.space.entity_count(self.entities),
            "categorical": self.categories.summary(),
            "fields": self.categories.missing_summary(),
            "attributes": {name: {"version": table.version, "rows": len(table.rows)}
                           for name, table in self.space.attributes.items()},
            "custom_features": {custom.name: custom.summary() for custom in self.space.custom},
            "model": model_summary(self.model),
            "drift": self.drift.summary(),
        }


def _refused_payload(item: Item) -> dict:
    """What a refused event or label is stored as, in its dead letter."""
    if item.__class__ is EventItem:
        return item.event.raw
    label = item.label
    return {"event_id": label.event_id, "ts": label.ts, "label": label.value}


def _join_rate_of(counts: dict[str, int]) -> float | None:
    """Share of resolved predictions whose label arrived (not expired into the default)."""
    joined = counts["labels_joined"] + counts["labels_immediate"]
    resolved = joined + counts["predictions_expired"]
    return round(joined / resolved, 4) if resolved else None
