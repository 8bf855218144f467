"""The `stats` snapshot in the Prometheus text exposition format (version 0.0.4).

`appliance stats --prometheus` prints it; `appliance up --metrics-port PORT` serves it on
127.0.0.1:PORT/metrics for an existing scraper. Counters end in `_total`; everything else is a gauge.
Undefined values (a ROC AUC before both classes were seen) are left out, not reported as 0.
"""

from __future__ import annotations

import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

PREFIX = "appliance_"


def render(stats: dict[str, Any]) -> str:
    """Return the exposition text for one stats snapshot."""
    out = _Writer()
    for name, value in (stats.get("counts") or {}).items():
        out.metric(f"{name}_total", "counter", f"{name.replace('_', ' ')} since the store was created", value)
    out.metric("pending_labels", "gauge", "predictions waiting for their label", stats.get("pending_labels"))
    out.metric("early_labels", "gauge", "labels waiting for their event", stats.get("early_labels"))
    out.metric("label_join_rate", "gauge", "share of resolved predictions whose label arrived",
               stats.get("label_join_rate"))
    out.metric("uptime_seconds", "gauge", "seconds since the appliance started", stats.get("uptime_seconds"))
    out.metric("inbox_lag_bytes", "gauge", "bytes the flow is behind the socket's inbox", stats.get("inbox_lag_bytes"))
    store = stats.get("store") or {}
    out.metric("store_queued_rows", "gauge", "rows waiting for the store writer", store.get("queued_rows"))
    out.metric("store_rows_written_total", "counter", "rows the store writer wrote since start", store.get("rows_written"))
    for key, value in (stats.get("rates") or {}).items():
        out.metric(key, "gauge", key.replace("_", " "), value)
    entities = stats.get("entities")
    if isinstance(entities, dict):
        out.family("entities", "gauge", "entities with feature state, by key",
                   [({"key": key}, value) for key, value in entities.items()])
    else:
        out.metric("entities", "gauge", "entities with feature state", entities)
    model = stats.get("model") or {}
    served = str(model.get("served_version", "v0")).lstrip("v")
    out.metric("model_served_version", "gauge", "the served model version", _number(served))
    for key in ("publications", "publications_refused", "promotions", "rollbacks", "examples_learned"):
        out.metric(f"model_{key}_total", "counter", f"model {key.replace('_', ' ')}", model.get(key))
    samples = []
    for role in ("served", "learner"):
        for metric, value in (model.get(role) or {}).items():
            samples.append(({"model": role, "metric": metric}, value))
    out.family("model_metric", "gauge", "prequential metrics of the served model and the champion's learner",
               samples)
    board = model.get("leaderboard") or []
    out.family("candidate_metric", "gauge", "prequential metrics of every candidate model",
               [({"candidate": row["name"], "role": row["role"], "metric": metric}, value)
                for row in board for metric, value in (row.get("metrics") or {}).items()])
    out.family("candidate_labels_scored", "gauge", "labels each candidate was scored on",
               [({"candidate": row["name"], "role": row["role"]}, row.get("labels_scored")) for row in board])
    drift = stats.get("drift") or {}
    out.metric("drift_alerts_total", "counter", "drift alerts raised", drift.get("alerts"))
    out.metric("drift_suppressed_total", "counter", "drift alerts suppressed by the cooldown",
               drift.get("suppressed_by_cooldown"))
    for name, value in (stats.get("server") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.metric(f"server_{name}", "gauge", f"socket server: {name.replace('_', ' ')}", value)
    return out.text()


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str, value: Any) -> None:
        self.family(name, kind, help_text, [({}, value)])

    def family(self, name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], Any]]) -> None:
        samples = [(labels, _number(value)) for labels, value in samples]
        samples = [(labels, value) for labels, value in samples if value is not None]
        if not samples:
            return
        full = PREFIX + _clean(name)
        self.lines.append(f"# HELP {full} {help_text}")
        self.lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{_clean(k)}="{_escape(v)}"' for k, v in labels.items())
            self.lines.append(f"{full}{{{label_text}}} {value!r}" if labels else f"{full} {value!r}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _clean(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def serve(port: int, snapshot: Callable[[], dict[str, Any]], host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve `/metrics` on host:port from a daemon thread; return the server (call `shutdown`)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            body = render(snapshot()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: no line per scrape
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
