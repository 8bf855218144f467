"""The lifecycle, shown: the same stream replayed with and without the automatic drift policy.

`appliance story` replays a config's stream twice at full speed (event time, so both runs see the
same labels at the same event times), once with drift alerts only and once with the policy
(a fresh challenger on concept drift, automatic promotion when it wins, automatic rollback when a
promotion does worse), reads the served model's rolling metric, the alerts and the audit trail from
each run's store, and writes an SVG of the served metric over event time with the drift start,
the alerts and the promotions and rollbacks marked, plus the figures as JSON.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from appliance.config.file import Config
from appliance.config.lifecycle import Lifecycle
from appliance.storage.store import open_db
from appliance.timeutil import format_timestamp

RUNS = ("no policy", "policy")
DAY = 86400.0


def lifecycles(base: Lifecycle) -> dict[str, Lifecycle]:
    """The two runs: alerts only, and the automatic policy (everything else as configured)."""
    return {"no policy": replace(base, on_concept_drift="alert", on_data_drift="alert", auto_promote=False,
                                 auto_rollback=False),
            "policy": replace(base, on_concept_drift="challenger", auto_promote=True, auto_rollback=True)}


def run_story(config: Config, workdir: Path, drift_at: float | None) -> dict[str, Any]:
    """Replay `config`'s stream once per run into `workdir`; return each run's history and figures."""
    from appliance.runtime.app import Appliance, RunOptions

    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for name, lifecycle in lifecycles(config.lifecycle).items():
        db = workdir / f"{name.replace(' ', '_')}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        run_config = replace(config, lifecycle=lifecycle, db=str(db), speed=0.0)  # event time, full speed
        started = time.perf_counter()
        Appliance(run_config, RunOptions(serve=False, fresh=True)).run()
        results[name] = {**history(str(db), config.model.task, config.model.metric_window),
                         "wall_seconds": round(time.perf_counter() - started, 1)}
    return {"drift_at": drift_at, "runs": results, "figures": figures(results, drift_at, config.model.task)}


def history(db_path: str, task: str, window: int = 2000, every: int = 200) -> dict[str, Any]:
    """What was served, scored as labels arrived: a rolling metric over the last `window` labels of
    the scores the served versions gave at event time (continuous across switches), sampled every
    `every` labels; plus the alerts and the serving changes."""
    from river import metrics, utils

    name = "roc_auc" if task == "classification" else "mae"
    metric = utils.Rolling(metrics.ROCAUC if task == "classification" else metrics.MAE, window_size=window)
    db = open_db(db_path)
    try:
        points = []
        classes: dict[Any, int] = {}
        recent: list[Any] = []
        # labels in the order of their times (rows layout 4 keys them by their event, not by arrival)
        query = ("SELECT l.ts, l.label, p.score FROM labels l JOIN predictions p USING (seq) "
                 "WHERE p.origin = 0 ORDER BY l.ts, l.seq")
        for count, (ts, label, score) in enumerate(db.execute(query), start=1):
            if task == "classification":
                y = bool(label)
                metric.update(y, {True: score, False: 1.0 - score})
                recent.append(y)
                classes[y] = classes.get(y, 0) + 1
                if len(recent) > window:
                    old = recent.pop(0)
                    classes[old] -= 1
            else:
                metric.update(label, score)
            if count % every == 0 and ts is not None and (task != "classification" or all(classes.get(c) for c in (True, False))):
                points.append((ts, float(metric.get())))
        alerts = [{"ts": row["event_ts"], "kind": row["kind"], "subject": row["subject"], "action": row["action"]}
                  for row in db.query("SELECT * FROM alerts ORDER BY id")]
        audit = [{"ts": row["event_ts"], "action": row["action"], "version": row["version"], "reason": row["reason"]}
                 for row in db.query("SELECT * FROM audit WHERE action IN ('promote', 'rollback', 'challenger', "
                                     "'retire', 'keep') ORDER BY id")]
    finally:
        db.conn.close()
    return {"metric": f"{name} of the served scores, last {window} labels", "points": points, "alerts": alerts,
            "audit": audit}


def figures(results: dict[str, Any], drift_at: float | None, task: str) -> dict[str, Any]:
    """Per run: detection delay, the metric before and after the drift, and the time to recover."""
    bigger = task == "classification"
    out: dict[str, Any] = {}
    for name, run in results.items():
        points = run["points"]
        row: dict[str, Any] = {"alerts": len(run["alerts"]),
                               "promotions": sum(a["action"] == "promote" for a in run["audit"]),
                               "rollbacks": sum(a["action"] == "rollback" for a in run["audit"]),
                               "challengers_started": sum(a["action"] == "challenger" for a in run["audit"])}
        if drift_at is not None and points:
            before = [v for t, v in points if drift_at - 4 * DAY <= t < drift_at]
            after = [(t, v) for t, v in points if t >= drift_at]
            concept = [a for a in run["alerts"] if a["kind"] == "concept" and a["ts"] >= drift_at]
            row["first_concept_alert_hours_after_drift"] = (
                round((concept[0]["ts"] - drift_at) / 3600, 1) if concept else None)
            if before and after:
                level = sum(before) / len(before)
                worst = min(v for _, v in after) if bigger else max(v for _, v in after)
                row["before_drift_mean"] = round(level, 4)
                row["after_drift_worst"] = round(worst, 4)
                row["after_drift_mean"] = round(sum(v for _, v in after) / len(after), 4)
                trough = next(i for i, (_, v) in enumerate(after) if v == worst)
                target = level - 0.02 if bigger else level + 0.02
                back = next((t for t, v in after[trough:] if (v >= target if bigger else v <= target)), None)
                row["hours_to_recover_within_0.02"] = None if back is None else round((back - drift_at) / 3600, 1)
        out[name] = row
    return out


def write_svg(story: dict[str, Any], path: str, title: str) -> None:
    """A line chart of the served metric over event time for both runs, with the events marked."""
    width, height, left, right, top, bottom = 960, 420, 64, 20, 40, 56
    runs = story["runs"]
    all_points = [p for run in runs.values() for p in run["points"]]
    if not all_points:
        raise ValueError("no metric history to plot")
    t0, t1 = min(t for t, _ in all_points), max(t for t, _ in all_points)
    low = min(v for _, v in all_points)
    high = max(v for _, v in all_points)
    low, high = math.floor(low * 20) / 20, math.ceil(high * 20) / 20
    if high <= low:
        high = low + 0.05

    def x(t: float) -> float:
        return left + (t - t0) / max(t1 - t0, 1.0) * (width - left - right)

    def y(v: float) -> float:
        return top + (high - v) / (high - low) * (height - top - bottom)

    colours = {"no policy": "#888888", "policy": "#1f6fd1"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{left}" y="22" font-size="15">{_escape(title)}</text>']
    steps = int(round((high - low) / 0.05))
    for i in range(steps + 1):
        v = low + i * 0.05
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 8}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    day = t0 - (t0 % DAY)
    while day <= t1:
        if day >= t0:
            parts.append(f'<line x1="{x(day):.1f}" x2="{x(day):.1f}" y1="{height - bottom}" '
                         f'y2="{height - bottom + 4}" stroke="#444"/>')
            if int((day - t0) // DAY) % 2 == 0:
                parts.append(f'<text x="{x(day):.1f}" y="{height - bottom + 18}" text-anchor="middle">'
                             f'{format_timestamp(day)[5:10]}</text>')
        day += DAY
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">event time '
                 f'(UTC)</text>')
    parts.append(f'<text x="16" y="{(top + height - bottom) / 2}" transform="rotate(-90 16 '
                 f'{(top + height - bottom) / 2})" text-anchor="middle">{runs[RUNS[0]]["metric"]}</text>')
    if story.get("drift_at") is not None:
        d = x(story["drift_at"])
        parts.append(f'<line x1="{d:.1f}" x2="{d:.1f}" y1="{top}" y2="{height - bottom}" stroke="#d62728" '
                     f'stroke-dasharray="5,4"/>')
        parts.append(f'<text x="{d + 4:.1f}" y="{top + 12}" fill="#d62728">drift starts</text>')
    for name in RUNS:
        run = runs[name]
        line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in run["points"])
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colours[name]}" stroke-width="1.6"/>')
    policy = runs["policy"]
    base = height - bottom
    for alert in policy["alerts"]:
        if alert["kind"] == "concept":
            parts.append(f'<line x1="{x(alert["ts"]):.1f}" x2="{x(alert["ts"]):.1f}" y1="{base - 10}" '
                         f'y2="{base}" stroke="#d62728" stroke-width="2"/>')
    for entry in policy["audit"]:
        if entry["action"] in ("promote", "rollback"):
            px, py = x(entry["ts"]), top + 6
            shape = (f"{px - 6:.1f},{py + 10:.1f} {px + 6:.1f},{py + 10:.1f} {px:.1f},{py:.1f}"
                     if entry["action"] == "promote" else
                     f"{px - 6:.1f},{py:.1f} {px + 6:.1f},{py:.1f} {px:.1f},{py + 10:.1f}")
            colour = "#2ca02c" if entry["action"] == "promote" else "#ff7f0e"
            parts.append(f'<polygon points="{shape}" fill="{colour}"/>')
    legend = [("no policy (alerts only)", colours["no policy"], "line"), ("policy", colours["policy"], "line"),
              ("concept drift alert (policy run)", "#d62728", "tick"), ("promotion", "#2ca02c", "up"),
              ("rollback", "#ff7f0e", "down")]
    lx = width - right - 230
    for i, (label, colour, kind) in enumerate(legend):
        ly = height - bottom - 88 + i * 16
        if kind == "line":
            parts.append(f'<line x1="{lx}" x2="{lx + 18}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" '
                         f'stroke-width="2"/>')
        else:
            parts.append(f'<rect x="{lx + 5}" y="{ly - 9}" width="8" height="8" fill="{colour}"/>')
        parts.append(f'<text x="{lx + 24}" y="{ly}">{_escape(label)}</text>')
    parts.append("</svg>")
    Path(path).write_text("\n".join(parts) + "\n", encoding="utf-8")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
