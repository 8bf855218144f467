"""The socket operations: predict, ingest, label, features, entity, stats, health (the operator's
commands and views are `operator_ops`'s).

Handlers run on the server's event-loop thread and must stay fast: they read the engine's published
state (the served model is frozen; entity states are replaced, never mutated) and append to the
inbox; they never touch the learner and never wait on the dataflow. Only one operator op reads
SQLite: `entity` (an index range scan of one entity's newest events, bounded by its `limit`), and
it defers that read to the server's worker thread, off the event loop.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance import __version__
from appliance.errors import InvalidEvent, RequestError
from appliance.ingest.events import Event, Label, check_not_ahead, make_label, parse_event
from appliance.ingest.inbox import Inbox
from appliance.learning.metrics import positive_score, predicted_label
from appliance.serving.board import StatsBoard
from appliance.serving.health import stage_health
from appliance.serving.latency import LatencyRing, quantiles_of
from appliance.serving.operator_ops import OperatorOps, limit_of
from appliance.serving.protocol import Deferred
from appliance.serving.status_record import PeerReport
from appliance.storage.entity_history import RECENT_PER_ENTITY, EntityHistory
from appliance.timeutil import format_timestamp

if TYPE_CHECKING:  # annotations only: a serving child never imports the engine (nor the store's sqlite_utils)
    from appliance.engine.core import Engine

MAX_INGEST = 10_000
MAX_INBOX_LAG = 256 << 20  # bytes the flow may fall behind the socket before ingest is refused


class Service:
    """Builds the protocol's handler table over one engine and one inbox."""

    def __init__(self, engine: Engine, inbox: Inbox, board: StatsBoard,
                 server_stats: Callable[[], dict] | None = None) -> None:
        self.engine = engine
        self.inbox = inbox
        self.board = board
        self.server_stats = server_stats
        self.store_stats: Callable[[], dict] | None = None
        self.disk_stats: Callable[[], dict] | None = None  # the store's size, growth, disk free (storage.disk)
        self.schema = engine.config.event
        self.task = engine.task
        self.started = time.time()
        self._ids = itertools.count(1)
        self._prefix = f"s{os.getpid():x}{int(self.started):x}-"
        self.flow_alive: Callable[[], bool] = lambda: True
        self.outage: Callable[[], Any] = lambda: None  # the `Outage` refusing writes, or None
        self.serving_pids: Callable[[], list[int]] = lambda: [os.getpid()]  # primary first, then its children
        self.predict_latency = LatencyRing()
        self.peer_latencies: Callable[[], dict[int, PeerReport]] = dict  # the serving children's reports by pid
        self.children_lag: Callable[[], dict[str, int]] = dict  # bytes the flow is behind in each child's inbox
        self.unlogged = 0  # scored-only predictions answered but not logged while overloaded
        self.flow_stats: Callable[[], dict] = dict  # the flow's restarts and failures (runtime.supervision)
        self.history = EntityHistory(engine.config.db, tuple(engine.space.layouts))

        self.operator = OperatorOps(engine, inbox, board)

    def attach(self, engine: Engine) -> None:
        """Answer from `engine` from now on (a restarted flow's, restored from the checkpoint)."""
        self.engine = engine
        self.operator.engine = engine

    def handlers(self) -> dict[str, Callable[[dict], dict]]:
        return {**self.operator.handlers(), "predict": self.predict, "ingest": self.ingest, "label": self.label,
                "features": self.features, "entity": self.entity, "stats": self.stats, "health": self.health}

    def predict(self, request: dict) -> dict:
        """Score an event with the served model; by default the event also enters the stream."""
        started = time.perf_counter_ns()
        raw = request.get("event")
        if raw is None and isinstance(request.get("entity"), dict):
            reply = self._predict_entity(request)
            self.predict_latency.record(time.perf_counter_ns() - started)
            return reply
        if not isinstance(raw, dict):
            raise RequestError("bad_request", 'predict needs "event": an object with the event fields, '
                               'or "entity": {key: value} to score from stored features alone')
        ingest, explain = _flag(request, "ingest", True), _flag(request, "explain", False)
        raw = self._complete(raw)
        event = self._parse(raw)
        if not isinstance(event, Event):
            raise RequestError("bad_request", "predict needs an event, not a label")
        self._check_ahead(event.ts)
        if ingest:
            self._check_lag()
        x, published, y, reply = self._score(event.values, event.ts, explain)
        late = self._late(event.ts) if ingest else None
        if late is not None:  # the flow dead-letters it as late: scored, but not logged and never learned on
            reply.update(late=True, logged=False, reason=late)
        if ingest or (self._lag() <= MAX_INBOX_LAG and self.outage() is None):
            self.inbox.append([{"event": raw, "ingest": ingest,
                                "served": {"x": x, "score": reply["score"], "version": published.version}}])
        else:  # overloaded or a stage down: a scored-only prediction is answered, not logged (and says so)
            self.unlogged += 1
            reply["logged"] = False
        self.predict_latency.record(time.perf_counter_ns() - started)
        return {"event_id": event.event_id, "prediction_id": event.event_id, **reply}

    def _predict_entity(self, request: dict) -> dict:
        """Score from entity features alone (no event fields): a lookup, not part of the stream."""
        engine = self.engine
        values = {}
        for key, value in request["entity"].items():
            if key not in engine.space.layouts:
                known = ", ".join(engine.space.layouts)
                raise RequestError("unknown_key", f'no features are kept by "{key}"; keys: {known}')
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise RequestError("bad_request", f'entity "{key}" must be a string or an integer')
            values[key] = str(value)
        now = engine.watermark if math.isfinite(engine.watermark) else time.time()
        _, _, _, reply = self._score(values, now, request.get("explain"))
        return {"event_id": None, "as_of": format_timestamp(now), **reply}

    def _score(self, values: dict, ts: float, explain: Any) -> tuple[dict, Any, Any, dict]:
        """Features and the served version's score; the version is read once for the whole request."""
        engine = self.engine
        x = engine.space.compute(values, ts, engine.entities)
        published = engine.model.view  # the served version, or while it follows its learner, a recent copy
        y = engine.model.predict(published.model, x)
        reply: dict[str, Any] = {"score": positive_score(y) if self.task == "classification" else y,
                                 "version": published.name}
        if self.task == "classification":
            reply["label"] = predicted_label(y)
        if explain:
            reply["features"] = x
        return x, published, y, reply

    def ingest(self, request: dict) -> dict:
        """Append events (and labels) to the stream; reply once they are durable."""
        events = request.get("events")
        if events is None and "event" in request:
            events = [request["event"]]
        if not isinstance(events, list) or not events:
            raise RequestError("bad_request", 'ingest needs "events": a non-empty list of event objects')
        if len(events) > MAX_INGEST:
            raise RequestError("too_large", f"ingest takes at most {MAX_INGEST} events per request")
        self._check_lag()
        rejected = []
        records = []
        for index, raw in enumerate(events):
            if isinstance(raw, dict) and raw.get(self.schema.time_field) is None:
                raw = events[index] = self._complete(raw)
            try:
                parsed = self._parse(raw if isinstance(raw, dict) else {"": raw})
                if parsed.ts is not None:
                    self._check_ahead(parsed.ts)
                late = self._late(parsed.ts) if isinstance(parsed, Event) else None
                if late is not None:
                    rejected.append({"index": index, "reason": late})
            except RequestError as exc:
                rejected.append({"index": index, "reason": exc.message})
            records.append({"event": raw})  # rejected ones too: the flow dead-letters them, keeping a record
        self.inbox.append(records)
        return {"accepted": len(events) - len(rejected), "rejected": rejected}

    def label(self, request: dict) -> dict:
        """Record the label of an earlier event."""
        event_id = request.get("event_id")
        if not isinstance(event_id, (str, int)) or isinstance(event_id, bool) or event_id == "":
            raise RequestError("bad_request", 'label needs "event_id" (string) and "label"')
        if "label" not in request:
            raise RequestError("bad_request", 'label needs "label"')
        label = self._parse_label(event_id, request.get("ts"), request["label"])
        if label.ts is not None:
            self._check_ahead(label.ts)
        # The record is shaped as the config says label events look, so the flow parses it as one.
        record = {self.schema.label_id_field: event_id, self.schema.label_field: request["label"]}
        if self.schema.type_field:
            record[self.schema.type_field] = self.schema.label_type
        if "ts" in request:
            record[self.schema.label_time_field] = request["ts"]
        self._check_lag()
        self.inbox.append([{"event": record}])
        return {"accepted": True}

    def features(self, request: dict) -> dict:
        """Return an entity's current aggregates with the event time they last changed."""
        return {"as_of": self._as_of(), "entities": dict(self._entity_features(request))}

    def entity(self, request: dict) -> Deferred:
        """One entity for the operator: its current features with their age, and its newest events
        with the prediction each got and the label, if one arrived (`limit`, default 20, at most `RECENT_PER_ENTITY`, 50)."""
        limit = limit_of(request, 20, RECENT_PER_ENTITY)
        (key, features), = self._entity_features(request, single=True)
        as_of = self._as_of()

        def read_history() -> dict:  # on the server's worker thread: SQLite never blocks the event loop
            recent = self.history.recent(key, features["entity"], limit)
            labelled = sum(1 for row in recent if row["label"] is not None)
            return {"as_of": as_of, "key": key, **features, "recent": recent, "recent_labelled": labelled}

        return Deferred(read_history)

    def _as_of(self) -> str | None:
        now = self.engine.watermark
        return None if not math.isfinite(now) else format_timestamp(now)

    def _entity_features(self, request: dict, single: bool = False) -> list[tuple[str, dict]]:
        entity = request.get("entity")
        if isinstance(entity, dict):
            pairs = [(k, str(v)) for k, v in entity.items()]
        elif isinstance(request.get("key"), str) and isinstance(entity, (str, int)):
            pairs = [(request["key"], str(entity))]
        else:
            raise RequestError("bad_request", f'{request.get("op")} needs "key" and "entity", or "entity": {{key: value}}')
        if single and len(pairs) != 1:
            raise RequestError("bad_request", f'{request.get("op")} takes one entity: "key" and "entity"')
        engine = self.engine
        now = engine.watermark
        result = []
        for key, value in pairs:
            if key not in engine.space.layouts:
                known = ", ".join(engine.space.layouts)
                raise RequestError("unknown_key", f'no features are kept by "{key}"; keys: {known}')
            as_of = now if math.isfinite(now) else 0.0
            values, last = engine.space.entity_features(key, value, as_of, engine.entities)
            result.append((key, {"entity": value, "known": last is not None, "values": values,
                                 "updated_at": None if last is None else format_timestamp(last),
                                 "age_seconds": None if last is None else round(max(0.0, as_of - last), 3),
                                 "ttl_seconds": engine.space.layouts[key].ttl}))
        return result

    def stats(self, request: dict) -> dict:
        """Return the latest engine stats, server counters and uptime."""
        stats = self.board.snapshot  # a fresh dict per read: ours to change
        stats["uptime_seconds"] = round(time.time() - self.started, 3)
        children_lag = self.children_lag()
        stats["inbox_lag_bytes"] = self._lag() + sum(children_lag.values())  # every inbox the flow reads
        if children_lag:
            stats["inbox_lag_by_input"] = {"inbox": self._lag(), **children_lag}
        stats["inbox_bytes"] = {"written": self.inbox.size, "released": self.inbox.released}
        if self.server_stats is not None:
            stats["server"] = self.server_stats()
        if self.store_stats is not None:
            stats["store"] = self.store_stats()
        if self.disk_stats is not None:
            stats["disk"] = self.disk_stats()
        stats["predict_latency"] = self.predict_latency.quantiles()
        peers = self.peer_latencies()
        if peers:  # every serving process's last service times together, and each apart
            own = self.predict_latency.recorded()
            stats["predict_latency"] = quantiles_of(itertools.chain(own, *(peer.samples for peer in peers.values())))
            stats["predict_latency_by_pid"] = {str(os.getpid()): quantiles_of(own),
                                               **{str(pid): quantiles_of(peer.samples) for pid, peer in peers.items()}}
            server = stats.get("server")
            if server is not None:  # the children's connections and requests with this process's own
                for peer in peers.values():
                    for name, value in peer.server.items():
                        server[name] = server.get(name, 0) + value
        stats["predictions_unlogged"] = self.unlogged
        stats["flow"] = self.flow_stats()
        stats["entity_keys"] = list(self.engine.space.layouts)
        stats.pop("curve", None)  # the `curve` op's; too long for a stats poll
        stats.pop("dead_letters_recent", None)  # the `data` op's
        outage = self.outage()
        stats["outage"] = None if outage is None else outage._asdict()
        stats["stages"] = stage_health(stats, self.flow_alive())
        return stats

    def health(self, request: dict) -> dict:
        """Return whether the appliance is serving and its flow is alive."""
        alive = self.flow_alive()
        outage = self.outage()
        disk = self.disk_stats() if self.disk_stats is not None else {}
        low = disk.get("state") == "low"
        status = "down" if outage is not None else "ok" if alive and not low else "degraded"
        return {"status": status, "flow_alive": alive, "version": __version__, "disk": disk,
                "outage": None if outage is None else outage._asdict(), "accepting_writes": outage is None,
                "model_version": self.engine.model.served.name, "pid": os.getpid(),
                "serving_pids": self.serving_pids(),
                "started_at": format_timestamp(self.started),
                "uptime_seconds": round(time.time() - self.started, 3)}

    # -- helpers ---------------------------------------------------------------------------
    def _complete(self, raw: dict) -> dict:
        """Fill a missing id (generated) and time (the stream's current event time)."""
        if raw.get(self.schema.id_field) is None or raw.get(self.schema.time_field) is None:
            raw = dict(raw)
            if raw.get(self.schema.id_field) is None:
                raw[self.schema.id_field] = f"{self._prefix}{next(self._ids)}"
            if raw.get(self.schema.time_field) is None:
                watermark = self.engine.watermark
                raw[self.schema.time_field] = watermark if math.isfinite(watermark) else time.time()
        return raw

    def _parse(self, raw: dict) -> Any:
        try:
            return parse_event(raw, self.schema, self.task)
        except InvalidEvent as exc:
            raise RequestError("invalid_event", exc.reason) from None

    def _parse_label(self, event_id: Any, ts: Any, value: Any) -> Label:
        """The flow's own label validator, so a label accepted here is never dead-lettered as invalid."""
        try:
            return make_label(event_id, ts, value, self.task)
        except InvalidEvent as exc:
            code = "invalid_label" if exc.reason.startswith("label ") else "invalid_event"
            raise RequestError(code, exc.reason) from None

    def _check_ahead(self, ts: float) -> None:
        """Refuse a time too far ahead of the stream and of the clock (the flow's rule, `max_future_skew`)."""
        if ts > self.engine.watermark + self.schema.max_future_skew:
            try:
                check_not_ahead(ts, self.engine.watermark, time.time(), self.schema.max_future_skew)
            except InvalidEvent as exc:
                raise RequestError("invalid_event", exc.reason) from None

    def _late(self, ts: float) -> str | None:
        """Why the flow will dead-letter an event of time `ts` as late, or None if it will not (yet)."""
        watermark = self.engine.watermark
        if ts >= watermark - self.schema.allowed_lateness:
            return None
        return (f"late: {watermark - ts:.0f}s behind the watermark {format_timestamp(watermark)} (allowed "
                f"{self.schema.allowed_lateness:.0f}s); not logged, never learned on")

    def _lag(self) -> int:
        return max(0, self.inbox.size - int(self.engine.offsets.get("inbox", 0)))

    def _check_lag(self) -> None:
        if self._lag() > MAX_INBOX_LAG:
            raise RequestError("overloaded", "the stream is behind; retry later")


def _flag(request: dict, name: str, default: bool) -> bool:
    """A boolean field of a request: true or false, nothing else (0 or "no" are refused, not guessed)."""
    value = request.get(name, default)
    if not isinstance(value, bool):
        raise RequestError("bad_request", f'"{name}" must be true or false, got {str(value)[:40]!r}')
    return value
