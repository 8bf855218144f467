"""What the console shows, as pure functions from the appliance's replies to Rich renderables and
table rows. No widgets here: `tui.console` puts these into its views. Every function accepts
replies of any shape (missing keys, wrong types) and shows "-" rather than failing.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from appliance.timeutil import format_timestamp

from .chart import PALETTE, legend, line_chart

STAGE_STYLE = {"ok": "green", "idle": "dim", "warn": "yellow", "behind": "dark_orange", "down": "bold red", "ended": "cyan"}


def fmt(value: Any, spec: str) -> str:
    """`value` formatted with `spec`, or "-" when it is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def when(value: Any) -> str:
    """An event time (epoch seconds) as ISO-8601, or "-"."""
    return format_timestamp(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def overview_figures(stats: dict) -> Table:
    """The overview's grid of figures: throughput, latency, labels, errors, serving."""
    counts, model = as_dict(stats.get("counts")), as_dict(stats.get("model"))
    served, rates = as_dict(model.get("served")), as_dict(stats.get("rates"))
    latency, server = as_dict(stats.get("predict_latency")), as_dict(stats.get("server"))
    delay, disk = as_dict(stats.get("label_delay_seconds")), as_dict(stats.get("disk"))
    until = disk.get("seconds_until_full")
    table = Table.grid(padding=(0, 2))
    for _ in range(4):
        table.add_column()
    rows = [
        ("events/s", fmt(rates.get("events_per_second"), ",.0f"), "predictions/s", fmt(rates.get("predictions_per_second"), ",.0f")),
        ("learns/s", fmt(rates.get("learns_per_second"), ",.0f"), "labels/s", fmt(rates.get("labels_per_second"), ",.0f")),
        ("predict p50", fmt(latency.get("p50_us"), ",.0f") + " µs", "predict p99", fmt(latency.get("p99_us"), ",.0f") + " µs"),
        ("events", fmt(counts.get("events"), ",d"), "predictions", fmt(counts.get("predictions"), ",d")),
        ("labels joined", fmt(counts.get("labels_joined"), ",d"), "pending labels", fmt(stats.get("pending_labels"), ",d")),
        ("label lag p50", fmt(delay.get("p50"), ",.0f") + " s", "label join rate", fmt(stats.get("label_join_rate"), ".1%")),
        ("queue (inbox lag)", fmt(stats.get("inbox_lag_bytes"), ",d") + " B", "dead letters", fmt(counts.get("dead_letters"), ",d")),
        ("late events", fmt(counts.get("late_events"), ",d"), "request errors", fmt(server.get("errors"), ",d")),
        ("served version", str(model.get("served_version", "-")) + (" + learner" if model.get("following") else ""), "publishing", str(model.get("publishing", "-"))),
        ("served ROC AUC (recent)", fmt(served.get("roc_auc_window"), ".4f"), "served log loss", fmt(served.get("log_loss"), ".4f")),
        ("champion", str(model.get("champion", "-")), "drift alerts", fmt(as_dict(stats.get("drift")).get("alerts"), ",d")),
        ("watermark", str(stats.get("watermark") or "-"), "uptime", fmt(stats.get("uptime_seconds"), ",.0f") + " s"),
        ("store size", fmt(_mb(disk.get("store_bytes")), ",.1f") + " MB",
         "store growth", fmt(disk.get("growth_bytes_per_s"), ",.0f") + " B/s"),
        ("disk free", fmt(_mb(disk.get("disk_free")), ",.1f") + " MB",
         "disk full in", "not growing" if disk and until is None else fmt(_hours(until), ",.1f") + " h"),
    ]
    for row in rows:
        table.add_row(Text(row[0], style="dim"), Text(row[1], style="bold"), Text(row[2], style="dim"),
                      Text(row[3], style="bold"))
    return table


def _mb(value: Any) -> float | None:
    return value / 1e6 if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _hours(value: Any) -> float | None:
    return value / 3600 if isinstance(value, (int, float)) and not isinstance(value, bool) else None


_BARS = " ▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int, capacity: int | None = None) -> str:
    """`values` as one line of block characters scaled to their maximum, the newest on the right.

    The line stands for `capacity` values (default: as many as given) in at most `width` cells:
    runs of values share a cell (their mean), and the part of the history not collected yet is
    blank, so the time axis stays fixed while the history fills.

    >>> sparkline([0, 1, 2, 4, 8], 5)
    ' ▁▂▄█'
    >>> sparkline([0, 0, 4, 4, 8, 8], 3)
    ' ▄█'
    >>> sparkline([2, 2, 4, 4], 4, capacity=8)
    '  ▄█'
    """
    capacity = max(capacity or len(values), len(values), 1)
    run = -(-capacity // max(1, width))
    cells = -(-capacity // run)
    means = [sum(values[i:i + run]) / len(values[i:i + run]) for i in range(0, len(values), run)]
    top = max(means, default=0.0)
    bars = "".join(_BARS[max(1, round(v / top * 8))] if top > 0 and v > 0 else "▁" if top <= 0 else " " for v in means)
    return bars.rjust(cells)


def sparklines(series: list[tuple[str, list[float], str]], width: int, capacity: int | None = None) -> Text:
    """One labelled line per series: name, sparkline of its whole history, newest value (`fmt` spec)."""
    text = Text()
    for i, (name, values, spec) in enumerate(series):
        if i:
            text.append("\n")
        newest = fmt(values[-1], spec) if values else "-"
        text.append(f" {name:<16}", style="dim")
        text.append(sparkline(values, max(8, width - 30), capacity), style="cyan")
        text.append(f" {newest:>10}", style="bold")
    return text


def stage_strip(stats: dict) -> Text:
    """ingest -> features -> predict -> labels -> learn, each with its state, then the details."""
    stages = [s for s in as_list(stats.get("stages")) if isinstance(s, dict)]
    text = Text(" ")
    for i, stage in enumerate(stages):
        state = str(stage.get("state"))
        if i:
            text.append(" → ", style="dim")
        text.append("● ", style=STAGE_STYLE.get(state, "white"))
        text.append(f"{stage.get('stage')} ", style="bold")
        text.append(state, style=STAGE_STYLE.get(state, "white"))
    for stage in stages:
        if stage.get("state") != "ok":
            text.append(f"\n   {stage.get('stage')}: {stage.get('detail')}", style=STAGE_STYLE.get(str(stage.get("state")), ""))
    return text if stages else Text(" stages: -", style="dim")


def serving_line(models: dict, stats: dict | None = None) -> str:
    """What serves, the publication state, any probation, and the concept-drift detector's state."""
    probation = models.get("probation")
    line = (f" serving v{models.get('served')} (champion {models.get('champion')}), publication "
            f"{models.get('publishing')}, {models.get('total_versions')} versions")
    if isinstance(probation, dict):
        line += f"; v{probation.get('version')} on probation: {probation.get('labels')}/{probation.get('needed')} labels"
    drift = as_dict((stats or {}).get("drift"))
    if drift:
        recent = [a for a in as_list(drift.get("recent")) if isinstance(a, dict)]
        last = f", last {when(recent[-1].get('event_ts'))} ({recent[-1].get('action')})" if recent else ""
        detector = str(drift.get("detector")).removeprefix("drift.").removesuffix("()")
        line += (f"\n drift ({detector}, served error): estimate {fmt(drift.get('error_estimate'), '.4f')}, "
                 f"{fmt(drift.get('alerts'), ',d')} alerts{last}")
    return line


def leaderboard_rows(models: dict) -> list[tuple[str, ...]]:
    rows = []
    for row in as_list(models.get("leaderboard")):
        if not isinstance(row, dict):
            continue
        metrics = as_dict(row.get("metrics"))
        primary = "roc_auc" if "roc_auc" in metrics else "mae"
        duel = as_dict(row.get("versus_champion"))
        versus = "-" if not isinstance(duel.get("challenger"), (int, float)) or not isinstance(duel.get("champion"), (int, float)) \
            else f"{duel['challenger']:.4f} vs {duel['champion']:.4f} ({fmt(duel.get('labels', 0), ',d')})"
        rows.append((str(row.get("name")), str(row.get("role")), fmt(metrics.get(primary + "_window"), ".4f"),
                     fmt(metrics.get(primary), ".4f"), fmt(row.get("labels_scored"), ",d"), versus,
                     "yes" if row.get("learns") else "no", str(row.get("spec"))[:60]))
    return rows


def curve_chart(curve: dict, width: int, height: int, focus: str | None = None) -> tuple[Text, Text]:
    """The metric curve over event time: the served version and every candidate overlaid.

    Returns (chart, legend). With `focus`, that candidate is drawn last and bold, the others dim.
    """
    points = [p for p in as_list(curve.get("points")) if isinstance(p, dict) and isinstance(p.get("event_ts"), (int, float))]
    names: list[str] = []
    for point in points:
        for name in as_dict(point.get("candidates")):
            if name not in names:
                names.append(name)
    series: dict[str, list] = {"served": [(p["event_ts"], _y(p.get("served"))) for p in points]}
    for name in names:
        series[name] = [(p["event_ts"], _y(as_dict(p.get("candidates")).get(name))) for p in points]
    styles = {"served": "bold white"}
    for i, name in enumerate(names):
        styles[name] = PALETTE[i % len(PALETTE)]
    if focus in series:
        series = {**{k: v for k, v in series.items() if k != focus}, focus: series[focus]}
        styles = {k: (f"bold {s.split()[-1]}" if k == focus else "dim") for k, s in styles.items()}
    chart = line_chart(series, width, height, styles=styles,
                       x_label=lambda x: format_timestamp(x)[:16].replace("T", " "))
    title = Text(f" {curve.get('metric', 'metric')} over event time, one point per {_every(points)} labels;"
                 f" champion {curve.get('champion')}\n ", style="dim")
    title.append_text(legend(list(series), styles))
    return chart, title


def _every(points: list[dict]) -> str:
    if len(points) >= 2 and isinstance(points[1].get("labels"), int) and isinstance(points[0].get("labels"), int):
        return f"{points[1]['labels'] - points[0]['labels']:,}"
    return "few hundred"


def _y(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def entity_summary(reply: dict) -> Text:
    if not reply:
        return Text(" choose a key, type an entity id and press Enter", style="dim")
    text = Text(f" {reply.get('key')} {reply.get('entity')}: ", style="bold")
    if not reply.get("known"):
        text.append("no features kept (never seen, or expired after its TTL)", style="yellow")
    else:
        text.append(f"updated {reply.get('updated_at')} (event time), {fmt(reply.get('age_seconds'), ',.0f')} s before "
                    f"the watermark; TTL {fmt(reply.get('ttl_seconds'), ',.0f')} s")
    recent = [row for row in as_list(reply.get("recent")) if isinstance(row, dict)]
    statuses: dict[str, int] = {}
    for row in recent:
        status = _status(row)
        statuses[status] = statuses.get(status, 0) + 1
    breakdown = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    text.append(f"\n {len(recent)} newest events{': ' + breakdown if breakdown else ''}"
                f"; as of {reply.get('as_of')}", style="dim")
    return text


def feature_value(value: Any) -> str:
    """A feature value, readable: thousands separated, at most four decimals, no trailing zeros.

    >>> [feature_value(v) for v in (0.0, 41178.25, 0.123456, 2e9, None)]
    ['0', '41,178.25', '0.1235', '2e+09', '-']
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    if abs(value) >= 1e9:
        return f"{value:.4g}"
    text = f"{value:,.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _status(row: dict) -> str:
    if row.get("label_status"):
        return str(row["label_status"])
    return "pending" if row.get("ingested", True) else "scored only"


def entity_feature_rows(reply: dict) -> list[tuple[str, str]]:
    return [(str(name), feature_value(value)) for name, value in as_dict(reply.get("values")).items()]


def entity_recent_rows(reply: dict) -> list[tuple[str, ...]]:
    rows = []
    for row in as_list(reply.get("recent")):
        if not isinstance(row, dict):
            continue
        label = row.get("label")
        rows.append((str(row.get("event_time")), str(row.get("event_id")), fmt(row.get("score"), ".4f"),
                     "-" if row.get("version") is None else f"v{row.get('version')}",
                     "-" if label is None else fmt(label, "g"), _status(row),
                     fmt(row.get("label_delay_seconds"), ",.0f")))
    return rows


def field_rows(data: dict) -> list[tuple[str, ...]]:
    categorical = as_dict(data.get("categorical"))
    rows = []
    for name, figures in as_dict(data.get("fields")).items():
        figures, cat = as_dict(figures), as_dict(categorical.get(name))
        rows.append((str(name), fmt(figures.get("missing"), ",d"), fmt(figures.get("missing_rate"), ".2%"),
                     fmt(cat.get("distinct"), ",d"), fmt(cat.get("unseen_rate"), ".2%"),
                     fmt(cat.get("unseen_rate_recent"), ".2%"), fmt(cat.get("collision_rate"), ".2%")))
    return rows


def data_summary(data: dict) -> Text:
    text = Text(f" events {fmt(data.get('events'), ',d')}   late {fmt(data.get('late_events'), ',d')} "
                f"(allowed lateness {fmt(data.get('allowed_lateness_seconds'), ',.0f')} s)   duplicates "
                f"{fmt(data.get('duplicates'), ',d')}   dead letters {fmt(data.get('dead_letters'), ',d')}")
    drift = as_dict(data.get("feature_drift"))
    if drift:
        text.append(f"\n data drift ({data.get('drift_detector')}):", style="dim")
        for name, figures in drift.items():
            figures = as_dict(figures)
            last = figures.get("last_alert")
            text.append(f"  {name} mean {fmt(figures.get('estimate'), '.4g')}"
                        f" over {fmt(figures.get('observations'), ',d')}"
                        + (f", alerted {when(last)}" if last is not None else ", no alert"))
    else:
        text.append("\n data drift: no features monitored ([lifecycle] drift_features)", style="dim")
    return text


def dead_letter_rows(data: dict) -> list[tuple[str, ...]]:
    return [(when(row.get("watermark")), str(row.get("source")), str(row.get("offset")), str(row.get("reason")),
             str(row.get("payload"))) for row in as_list(data.get("dead_letters_recent")) if isinstance(row, dict)]


CELL_PADDING = 2  # a DataTable cell's padding, one column each side
MIN_FLEXIBLE = 8  # a shortened column keeps at least this many characters


def fit_columns(header: tuple[str, ...], rows: list[tuple[str, ...]], width: int,
                flexible: tuple[int, ...]) -> list[tuple[str, ...]]:
    """Shorten the `flexible` columns' cells (ending them with "…") so the table fits `width`.

    The other columns keep their full text; the flexible ones share what is left, each at least
    `MIN_FLEXIBLE` wide, the longer ones giving up more.
    """
    if not rows or not flexible:
        return rows
    natural = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    room = width - sum(natural[i] + CELL_PADDING for i in range(len(natural)) if i not in flexible)
    room -= CELL_PADDING * len(flexible)
    wanted = {i: natural[i] for i in flexible}
    if sum(wanted.values()) <= room:
        return rows
    limits = dict(wanted)
    while sum(limits.values()) > max(room, MIN_FLEXIBLE * len(flexible)):  # take from the widest first
        widest = max(limits, key=limits.__getitem__)
        if limits[widest] <= MIN_FLEXIBLE:
            break
        limits[widest] -= 1
    return [tuple(_ellipsis(cell, limits[i]) if i in limits else cell for i, cell in enumerate(row)) for row in rows]


def _ellipsis(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def alert_rows(alerts: list) -> list[tuple[str, ...]]:
    return [(str(a.get("id")), when(a.get("event_ts")), str(a.get("kind")), str(a.get("subject")), str(a.get("action")))
            for a in alerts if isinstance(a, dict)]


def audit_rows(audit: list) -> list[tuple[str, ...]]:
    return [(str(e.get("id")), when(e.get("event_ts")), str(e.get("action")),
             "-" if e.get("version") is None else f"v{e['version']}", str(e.get("actor")), str(e.get("reason")))
            for e in audit if isinstance(e, dict)]
