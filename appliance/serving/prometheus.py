"""The `stats` snapshot as Prometheus metrics, through `prometheus_client`.

`StatsCollector` turns one stats snapshot per scrape into metric families; it lives in its own
`CollectorRegistry` (never the library's global one, so no process or GC metrics are mixed in).
`appliance stats --prometheus` prints `render(reply)` (`generate_latest`, text format 0.0.4);
`appliance up --metrics-port PORT` serves the registry with `start_http_server` on 127.0.0.1:PORT
(`/metrics` only; the library also answers `Accept: application/openmetrics-text`, gzip and
`?name[]=` filters). Counters end in `_total`; everything else is a gauge. Undefined values (a ROC AUC
before both classes were seen) are left out, not reported as 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "appliance_"
METRICS_PATH = "/metrics"

Snapshot = Callable[[], dict[str, Any]]
Sample = tuple[dict[str, str], Any]


class StatsCollector(Collector):
    """Every metric of one `stats` snapshot; `snapshot` is called once per scrape, on the scraping
    thread (the metrics server's, never the socket server's loop)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from families(self.snapshot())


def registry_for(snapshot: Snapshot) -> CollectorRegistry:
    """A registry of its own holding only a `StatsCollector` over `snapshot`."""
    # The collector's names depend on the snapshot, so it has no `describe`; this flag keeps it in
    # `?name[]=` scrapes, which would otherwise skip a collector with no names.
    registry = CollectorRegistry(support_collectors_without_names=True)
    registry.register(StatsCollector(snapshot))
    return registry


def render(stats: dict[str, Any]) -> str:
    """Return the text exposition (format 0.0.4) of one stats snapshot."""
    return generate_latest(registry_for(lambda: stats)).decode()


def serve(port: int, snapshot: Snapshot, host: str = "127.0.0.1") -> WSGIServer:
    """Serve `/metrics` on host:port from a daemon thread; return the server (call `shutdown`).
    A port that cannot be bound raises `OSError` here, before anything is served."""
    server, _thread = start_http_server(port, addr=host, registry=registry_for(snapshot))
    # prometheus_client answers every path with the metrics; keep our contract of `/metrics` only.
    # (A request in the instant between the start and this line would get the metrics: harmless.)
    server.set_app(_only_metrics(server.get_app()))
    return server


def _only_metrics(app: Callable) -> Callable:
    def only_metrics(environ: dict, start_response: Callable) -> list[bytes]:
        if environ.get("PATH_INFO") != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"only {METRICS_PATH} is served here\n".encode()]
        return app(environ, start_response)

    return only_metrics


# (metric, type, help, the stats section it is read from (None: the top level), its key there)
_SNAPSHOT = (
    ("pending_labels", "gauge", "predictions waiting for their label", None, "pending_labels"),
    ("early_labels", "gauge", "labels waiting for their event", None, "early_labels"),
    ("label_join_rate", "gauge", "share of resolved predictions whose label arrived", None, "label_join_rate"),
    ("uptime_seconds", "gauge", "seconds since the appliance started", None, "uptime_seconds"),
    ("inbox_lag_bytes", "gauge", "bytes the flow is behind the socket's inbox", None, "inbox_lag_bytes"),
    ("store_queued_rows", "gauge", "rows waiting for the store writer", "store", "queued_rows"),
    ("store_rows_written_total", "counter", "rows the store writer wrote since start", "store", "rows_written"),
    ("store_max_bytes", "gauge", "the store's byte bound ([retention] max_bytes)", "store", "max_bytes"),
    ("store_used_bytes", "gauge", "bytes of the store's pages in use at the last checkpoint", "store", "used_bytes"),
    ("store_bytes", "gauge", "bytes of the store file and its WAL", "disk", "store_bytes"),
    ("store_growth_bytes_per_second", "gauge", "growth of the store over the last minute", "disk",
     "growth_bytes_per_s"),
    ("disk_free_bytes", "gauge", "free bytes on the store's disk", "disk", "disk_free"),
    ("disk_seconds_until_full", "gauge", "free bytes / the store's growth (absent: not growing)", "disk",
     "seconds_until_full"),
)


def families(stats: dict[str, Any]) -> Iterator[Metric]:
    """The metric families of one stats snapshot, in the order of the `stats` reply."""
    for name, value in (stats.get("counts") or {}).items():
        yield from _one(f"{name}_total", "counter", f"{name.replace('_', ' ')} since the store was created", value)
    for name, kind, text, section, key in _SNAPSHOT:
        yield from _one(name, kind, text, (stats.get(section) or {}).get(key) if section else stats.get(key))
    for key, value in (stats.get("rates") or {}).items():
        yield from _one(key, "gauge", key.replace("_", " "), value)
    entities = stats.get("entities")
    if isinstance(entities, dict):
        yield from _family("entities", "gauge", "entities with feature state, by key",
                           [({"key": key}, value) for key, value in entities.items()])
    else:
        yield from _one("entities", "gauge", "entities with feature state", entities)
    model = stats.get("model") or {}
    served = str(model.get("served_version", "v0")).lstrip("v")
    yield from _one("model_served_version", "gauge", "the served model version", served)
    for key in ("publications", "publications_refused", "promotions", "rollbacks", "examples_learned"):
        yield from _one(f"model_{key}_total", "counter", f"model {key.replace('_', ' ')}", model.get(key))
    yield from _family("model_metric", "gauge", "prequential metrics of the served model and the champion's learner",
                       [({"model": role, "metric": metric}, value)
                        for role in ("served", "learner") for metric, value in (model.get(role) or {}).items()])
    board = model.get("leaderboard") or []
    yield from _family("candidate_metric", "gauge", "prequential metrics of every candidate model",
                       [({"candidate": row["name"], "role": row["role"], "metric": metric}, value)
                        for row in board for metric, value in (row.get("metrics") or {}).items()])
    yield from _family("candidate_labels_scored", "gauge", "labels each candidate was scored on",
                       [({"candidate": row["name"], "role": row["role"]}, row.get("labels_scored"))
                        for row in board])
    drift = stats.get("drift") or {}
    yield from _one("drift_alerts_total", "counter", "drift alerts raised", drift.get("alerts"))
    yield from _one("drift_suppressed_total", "counter", "drift alerts suppressed by the cooldown",
                    drift.get("suppressed_by_cooldown"))
    for name, value in (stats.get("server") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield from _one(f"server_{name}", "gauge", f"socket server: {name.replace('_', ' ')}", value)


def _one(name: str, kind: str, help_text: str, value: Any) -> Iterator[Metric]:
    return _family(name, kind, help_text, [({}, value)])


def _family(name: str, kind: str, help_text: str, samples: list[Sample]) -> Iterator[Metric]:
    """One family of `kind` ("counter" or "gauge"), or nothing when no sample has a defined value.
    A counter's name ends in `_total`; `CounterMetricFamily` takes it without and adds it back."""
    defined = [(labels, number) for labels, value in samples if (number := _number(value)) is not None]
    if not defined:
        return
    full = PREFIX + _clean(name)
    label_names = [_clean(key) for key in defined[0][0]]
    if kind == "counter":
        family: Metric = CounterMetricFamily(full.removesuffix("_total"), help_text, labels=label_names)
    else:
        family = GaugeMetricFamily(full, help_text, labels=label_names)
    for labels, number in defined:
        family.add_metric([str(value) for value in labels.values()], number)
    yield family


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@lru_cache(maxsize=4096)  # the same few dozen names every scrape
def _clean(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)
