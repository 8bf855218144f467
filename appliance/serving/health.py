"""The health of each stage of the appliance, from one stats snapshot: what the console's overview
and `appliance stats` show at a glance.

Stages, in the order an event meets them: ingest -> features -> predict -> labels -> learn, and
the store they all write to and its disk (`storage.disk`'s thresholds). Each gets a state and the figure behind it:

- `down`: the stage cannot work (the dataflow has stopped; the store cannot be written, e.g. the
  disk is full; the inbox was truncated or deleted under the running appliance; the disk's free
  space is under the disk stage's reserve): writes are refused;
- `behind`: work is queueing (the flow is more than `BEHIND_BYTES` behind the socket inbox, or
  the store writer's row queue is nearly full);
- `warn`: it works, with a problem an operator should look at (the reason says which);
- `idle`: nothing has reached it yet;
- `ok`.

>>> states = stage_health({"counts": {"events": 0}}, flow_alive=True)
>>> [(s["stage"], s["state"]) for s in states]
[('ingest', 'idle'), ('features', 'idle'), ('predict', 'idle'), ('labels', 'idle'), ('learn', 'idle')]
"""

from __future__ import annotations

from typing import Any

BEHIND_BYTES = 16 << 20
DEAD_LETTER_WARN = 0.01  # share of input lines dead-lettered (malformed, late, duplicate)
P99_WARN_US = 5_000.0  # server time of a predict request
STORE_BEHIND = 0.8  # share of the store writer's row queue in use


def stage_health(stats: dict[str, Any], flow_alive: bool) -> list[dict[str, Any]]:
    counts = stats.get("counts") or {}
    rates = stats.get("rates") or {}
    model = stats.get("model") or {}
    latency = stats.get("predict_latency") or {}
    events, dead = counts.get("events", 0), counts.get("dead_letters", 0)
    lag = stats.get("inbox_lag_bytes") or 0
    stages = []

    def add(stage: str, state: str, detail: str) -> None:
        stages.append({"stage": stage, "state": state, "detail": detail})

    events_rate = rates.get("events_per_second") or 0.0
    outage = stats.get("outage") or {}
    ended = (stats.get("source") or {}).get("ended_at")
    if not flow_alive:
        add("ingest", "down", "the dataflow has stopped; see the appliance's log")
    elif outage.get("stage") in ("inbox", "order log"):
        add("ingest", "down", f"{outage['stage']}: {outage['reason']}; writes refused")
    elif lag > BEHIND_BYTES:
        add("ingest", "behind", f"{lag:,} bytes of socket input not yet processed")
    elif not events:
        add("ingest", "idle", "no events yet")
    elif ended and not events_rate:
        add("ingest", "ended", f"the source ended at {ended}; {events:,} events; serving what comes over the socket")
    else:
        add("ingest", "ok", f"{events_rate:,.0f} events/s, {events:,} events" + (f"; the source ended at {ended}" if ended else ""))

    share = dead / (events + dead) if events + dead else 0.0
    late = counts.get("late_events", 0)
    if not events and not dead:
        add("features", "idle", "no events yet")
    elif share > DEAD_LETTER_WARN:
        add("features", "warn", f"{share:.1%} of input dead-lettered ({dead:,}; {late:,} late)")
    else:
        add("features", "ok", f"{stats.get('entities', 0):,} entities, {dead:,} dead letters, {late:,} late")

    p99 = latency.get("p99_us")
    predictions = counts.get("predictions", 0)
    if not predictions and p99 is None:
        add("predict", "idle", "no predictions yet")
    elif p99 is not None and p99 > P99_WARN_US:
        add("predict", "warn", f"p99 {p99:,.0f} µs server time (over {P99_WARN_US:,.0f})")
    else:
        add("predict", "ok", f"{predictions:,} predictions"
            + (f", p50 {latency['p50_us']:,.0f} µs p99 {p99:,.0f} µs" if p99 is not None else ""))

    labels = counts.get("labels_joined", 0) + counts.get("labels_immediate", 0)
    pending = stats.get("pending_labels", 0)
    if not labels and not counts.get("labels_defaulted", 0):
        add("labels", "idle", f"no labels yet, {pending:,} predictions waiting")
    else:
        rate = stats.get("label_join_rate")
        joined = "-" if rate is None else f"{rate:.0%}"
        add("labels", "ok", f"{labels:,} joined ({joined} of resolved), {pending:,} pending")

    learned = model.get("examples_learned", 0)
    if not learned:
        add("learn", "idle", "nothing learned yet")
    elif model.get("publishing") == "paused":
        add("learn", "warn", f"learning; automatic publication paused (serving {model.get('served_version')})")
    else:
        add("learn", "ok", f"{learned:,} examples, serving {model.get('served_version')}")

    store = stats.get("store")
    if isinstance(store, dict):
        queued, limit = store.get("queued_rows", 0), store.get("max_rows") or 1
        if store.get("failure"):
            add("store", "down", f"{store['failure']}; writes refused, {queued:,} rows held")
        elif queued >= STORE_BEHIND * limit:
            add("store", "behind", f"{queued:,} rows waiting to be written (the flow waits at {limit:,}); "
                                   "the disk or the CPU is the bottleneck")
        else:
            add("store", "ok", f"{store.get('rows_written', 0):,} rows written, {queued:,} queued")
    disk = stats.get("disk")
    if isinstance(disk, dict) and disk:
        free, size = disk["disk_free"], disk["store_bytes"]
        until = disk.get("seconds_until_full")
        full = "not growing" if until is None else f"full in {until / 3600:,.1f} h at this rate"
        detail = f"store {size / 1e6:,.1f} MB, {free / 1e6:,.1f} MB free on its disk, {full}"
        if disk["state"] == "refusing":
            add("disk", "down", f"{detail}; writes refused (disk_low) under {disk['refuse_below'] / 1e6:,.1f} MB free")
        elif disk["state"] == "low":
            add("disk", "warn", f"{detail}; writes are refused under {disk['refuse_below'] / 1e6:,.1f} MB free")
        else:
            add("disk", "ok", detail)
    return stages
