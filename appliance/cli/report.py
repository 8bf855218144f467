"""Human formatting of stats: the one-line status of `appliance up` and the `stats` table."""

from __future__ import annotations

from typing import Any


def format_status(stats: dict[str, Any]) -> str:
    """Return one status line: rates, counts, the live metric and the served version."""
    counts = stats.get("counts", {})
    model = stats.get("model", {})
    rates = stats.get("rates", {})
    served = model.get("served", {})
    metric = _metric_text(served)
    ended = (stats.get("source") or {}).get("ended_at")
    state = f"source ended at {ended}, serving · " if ended else ""
    return (f"[{stats.get('watermark') or 'no events yet'}] {state}{rates.get('events_per_second', 0):,.0f} ev/s · "
            f"events {counts.get('events', 0):,} · predictions {counts.get('predictions', 0):,} · "
            f"labels joined {counts.get('labels_joined', 0) + counts.get('labels_immediate', 0):,} "
            f"(+{counts.get('labels_defaulted', 0):,} by default) · pending {stats.get('pending_labels', 0):,} · "
            f"{metric} · model {model.get('served_version', '?')}")


def _metric_text(values: dict[str, float | None]) -> str:
    if "roc_auc" in values:
        if values["roc_auc"] is None:
            return "AUC - (one class so far)"
        return f"AUC {values['roc_auc']:.3f} (recent {_number(values['roc_auc_window'], '.3f')})"
    if "mae" in values:
        return f"MAE {values['mae']:.4g} (recent {values['mae_window']:.4g})"
    return "no labels yet"


def format_stats(stats: dict[str, Any]) -> str:
    """Return a readable multi-line table of stats."""
    counts = stats.get("counts", {})
    model = stats.get("model", {})
    lines = ["Stream"]
    lines += [f"  {name.replace('_', ' '):<22} {value:>12,}" for name, value in counts.items()]
    lines.append(f"  {'watermark':<22} {stats.get('watermark') or '-':>24}")
    lines.append(f"  {'entities':<22} {stats.get('entities', 0):>12,}")
    lines.append(f"  {'pending labels':<22} {stats.get('pending_labels', 0):>12,}")
    if stats.get("label_join_rate") is not None:
        lines.append(f"  {'label join rate':<22} {stats['label_join_rate']:>12.2%}")
    for name, table in (stats.get("attributes") or {}).items():
        lines.append(f"  {'attributes ' + name:<22} {'v' + str(table['version']):>12} ({table['rows']:,} rows)")
    for name, custom in (stats.get("custom_features") or {}).items():
        if custom.get("errors"):
            lines.append(f"  {'custom ' + name:<22} {custom['errors']:>12,} errors, last: {custom['last_error']}")
    delays = stats.get("label_delay_seconds") or {}
    if delays:
        lines.append("  label delay            " + "  ".join(f"{k} {v / 3600:.1f}h" for k, v in delays.items()))
    for key in ("events_per_second", "wall_seconds"):
        if key in stats:
            lines.append(f"  {key.replace('_', ' '):<22} {stats[key]:>12,}")
    lines.append(f"Model  {model.get('spec', '')}")
    lines.append(f"  served version {model.get('served_version', '?')} · examples learned "
                 f"{model.get('examples_learned', 0):,} · publications {model.get('publications', 0)} "
                 f"(refused {model.get('publications_refused', 0)})")
    for role in ("served", "learner"):
        values = model.get(role) or {}
        if values:
            lines.append(f"  {role:<8} " + "  ".join(f"{k} {_number(v, '.4f')}" for k, v in sorted(values.items())))
    board = model.get("leaderboard") or []
    if len(board) > 1:
        lines.append(f"  champion {model.get('champion')} · promotions {model.get('promotions', 0)} · "
                     f"rollbacks {model.get('rollbacks', 0)}")
        for row in board:
            metrics = row.get("metrics") or {}
            primary = "roc_auc" if "roc_auc" in metrics else "mae"
            lines.append(f"  {row['role']:<10} {row['name']:<12} recent {primary} "
                         f"{_number(metrics.get(primary + '_window'), '.4f')}  overall "
                         f"{_number(metrics.get(primary), '.4f')}  ({row['labels_scored']:,} labels)")
    drift = stats.get("drift") or {}
    if drift.get("alerts"):
        last = drift["recent"][-1] if drift.get("recent") else None
        lines.append(f"Drift  {drift['alerts']} alerts ({drift.get('suppressed_by_cooldown', 0)} suppressed by "
                     f"cooldown)" + (f"; last: {last['kind']} on {last['subject']}, {last['action']}" if last else ""))
    flow = stats.get("flow") or {}
    if flow.get("restarts") or flow.get("failures"):
        last = flow["failures"][0] if flow.get("failures") else None
        lines.append(f"Flow  restarted {flow.get('restarts', 0)} times from its checkpoint"
                     + (f"; last failure: {last['error']}" if last else "")
                     + (f"; {len(flow['poisoned'])} items dead-lettered after failing twice" if flow.get("poisoned") else ""))
    server = stats.get("server")
    if server:
        lines.append("Server  " + "  ".join(f"{k} {v}" for k, v in server.items()))
    return "\n".join(lines)


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
