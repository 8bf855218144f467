"""Predict latency and throughput of the appliance beside its peers, in interleaved rounds.

Every server runs at once, each in its own process: the appliance (`appliance up` replaying the
sample at a steady event-time speed, so it keeps ingesting throughout) and the peers of
`appliance.bench.peers`. Each round measures every target in turn, the same way: a sequential
client (one connection, one request in flight, round trips in µs), then N concurrent connections
(`wire.concurrent_processes`: two client processes, each an epoll loop keeping one request in
flight per connection). The background ingest loads the machine for all targets alike, so the
ratios compare the servers, not the moments they were measured at.

Requests, built once and sent in turn: the appliance gets `predict`s of payments of the sample
(`ingest: false`, so the measurement adds nothing to the stream); the echo server the same lines;
FastAPI POSTs of feature vectors the appliance logged; redis `GET` of a key holding a predict reply.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import orjson

from appliance.bench import peers, wire
from appliance.bench.measure import predict_line


@dataclass
class ServingPlan:
    """How much to measure: per round and target, `requests` sequential (after `warmup`), then
    `clients` concurrent connections for `seconds` (after `load_warmup` uncounted seconds)."""

    rounds: int = 5
    requests: int = 5000
    warmup: int = 500
    clients: int = 16
    seconds: float = 5.0
    load_warmup: float = 1.0


@dataclass
class TargetResult:
    """Per round figures of one target and their medians."""

    name: str
    rounds: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None

    def median(self, key: str) -> float | None:
        values = [r[key] for r in self.rounds if r.get(key) is not None]
        return round(statistics.median(values), 1) if values else None


def targets(appliance_socket: str, echo: str | None, fastapi: str | None, redis: str | None,
            events: list[dict], feature_vectors: list[dict] | None) -> dict[str, wire.Target]:
    """The pre-built requests for each server that is up: `predict` of each of `events` for the
    appliance (and the echo server), a POST of each feature vector for FastAPI, one GET for redis."""
    lines = tuple(predict_line(event, i + 1) for i, event in enumerate(events))
    out = {"appliance": wire.Target("appliance", appliance_socket, lines, "line", b'"ok":true')}
    if echo:
        out["echo"] = wire.Target("echo", echo, lines, "line", b'"op":"predict"')
    if fastapi and feature_vectors:
        posts = tuple(peers.http_post("/predict", orjson.dumps({"x": x})) for x in feature_vectors)
        out["fastapi"] = wire.Target("fastapi", fastapi, posts, "http", b'"score"')
    if redis:
        out["redis"] = wire.Target("redis", redis, (peers.REDIS_GET,), "resp", b"$")
    return out


def sample_payments(path: str, count: int) -> list[dict]:
    """`count` payments spread evenly over a JSONL file of the sample, without their id and time, so
    the appliance gives each a fresh id and the stream's current time: real entities, some with
    state, some idle past their TTL, some not seen yet, as live traffic would be."""
    with open(path, "rb") as handle:
        payments = [line for line in handle if b'"type":"payment"' in line]
    step = max(1, len(payments) // count)
    events = []
    for line in payments[::step][:count]:
        event = orjson.loads(line)
        event.pop("event_id", None)
        event.pop("ts", None)
        events.append(event)
    return events


def compare(servers: dict[str, wire.Target], plan: ServingPlan, ingest_counter: Any = None) -> dict[str, TargetResult]:
    """Measure every target once per round, in the same order each round (interleaved)."""
    results = {name: TargetResult(name) for name in servers}
    for _ in range(plan.rounds):
        for name, target in servers.items():
            before = ingest_counter() if ingest_counter is not None and name == "appliance" else None
            figures = wire.sequential(target, plan.requests, plan.warmup)
            load = wire.concurrent_processes(target, plan.clients, plan.seconds, warmup=plan.load_warmup)
            figures["throughput"] = load["per_second"]
            figures["load_errors"] = load["errors"]
            if before is not None:
                figures["events_ingested"] = ingest_counter() - before
            results[name].rounds.append(figures)
    return results
