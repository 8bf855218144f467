"""The text of `appliance init`'s starter config: each guess of `starter.guess_config` with its reason."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from appliance.init.guess import Guess
from appliance.timeutil import format_duration, format_timestamp

Write = Callable[[str], Any]
MAX_AGGREGATES = 32  # per-key aggregates the starter writes at most (4 keys x 8)


def render_toml(guess: Guess, path: str, spec: str) -> str:
    """Return the commented TOML for `guess`; `spec` is the events file relative to the config."""
    parts: list[str] = []
    w = parts.append
    _header(w, guess, path)
    w("[source]\n")
    where = "absolute: it shares no folder with this file" if spec.startswith("/") else "relative to this file"
    w(f"spec = {json.dumps(spec)}      # {where}\n")
    w("speed = 0                # event-time replay speed for `up`; 0 = as fast as possible\n\n")
    _event(w, guess)
    _labels_and_model(w, guess)
    _features(w, guess)
    _aggregates(w, guess)
    _retention(w, guess)
    w("[serve]\n")
    w('socket = "appliance.sock"\n')
    w('db = "appliance.db"\n')
    return "".join(parts)


def quoted(values: list[str]) -> str:
    """Return a TOML array of strings."""
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def approx_duration(seconds: float | None) -> str:
    """Return a duration to one decimal in its largest unit, e.g. 2.8h."""
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _header(w: Write, guess: Guess, path: str) -> None:
    profile = guess.profile
    read = f"its first {profile.rows:,} rows" if profile.truncated else "the whole file"
    w(f"# Starter config written by `appliance init {path}` from {read}: {profile.events:,} events")
    w(f" and {profile.labels:,} label rows" if profile.layout.separate_labels else "")
    if profile.first_ts is not None and profile.last_ts is not None:
        rate = profile.events / max(profile.span / 3600, 1e-9)
        w(f",\n# {format_timestamp(profile.first_ts)} .. {format_timestamp(profile.last_ts)} "
          f"({approx_duration(profile.span)}, {rate:,.1f} events per hour)")
    w(".\n# Every guess says why; check them, then run\n")
    w("#   appliance replay --config <this file>     # learn from the history, as fast as possible\n")
    w("#   appliance up --config <this file>         # then serve predictions on ./appliance.sock\n")
    w("# docs/config.md explains every key.\n")
    for warning in guess.warnings():
        w(f"# WARNING: {warning}\n")
    w("\n")


def _event(w: Write, guess: Guess) -> None:
    layout, profile = guess.profile.layout, guess.profile
    w("[event]\n")
    w(f"id = {json.dumps(layout.id_field)}      # distinct in every event: labels name events by it\n")
    w(f"time = {json.dumps(layout.time_field)}      # a timestamp in every event\n")
    if not layout.separate_labels:
        w('type = "type"      # no label rows in the file; labels sent later are marked type = "label"\n')
    elif layout.label_by == "type":
        w(f"type = {json.dumps(layout.type_field)}      # rows with {layout.type_field} = "
          f"{json.dumps(layout.label_type)} carry few fields and name an earlier event: labels\n")
        w(f"label_type = {json.dumps(layout.label_type)}\n")
    else:
        w(f'type = ""\nlabel_by = "label_id"      # rows with "{layout.label_id_field}" (which events lack) '
          "name an earlier event: labels\n")
    if layout.separate_labels and layout.label_id_field != layout.id_field:
        w(f"label_id = {json.dumps(layout.label_id_field)}      # a label names its event by this field\n")
    if layout.separate_labels and layout.label_time_field not in (None, layout.time_field):
        w(f"label_time = {json.dumps(layout.label_time_field)}      # the label's own time\n")
    if layout.label_field:
        w(f"label = {json.dumps(layout.label_field)}\n")
    else:
        w('label = "label"      # no label field found: set it\n')
    w(f"keys = {quoted(guess.keys)}      # entities features are kept for (see each field below)\n")
    w(f"numeric = {quoted(guess.numeric)}\n")
    w(f"categorical = {quoted(guess.categorical)}\n")
    w(f"optional = {quoted(guess.optional)}      # missing in some events (others are required)\n")
    lateness, why = guess.lateness
    w(f"allowed_lateness = {json.dumps(format_duration(lateness))}      # {why}\n")
    w(f"# Field by field, over {profile.events:,} events:\n")
    width = max((len(role.name) for role in guess.fields), default=0)
    for role in guess.fields:
        w(f"#   {role.name.ljust(width)}  {role.why}\n")
    for note in layout.notes:
        w(f"# Note: {note}\n")
    w("\n")


def _labels_and_model(w: Write, guess: Guess) -> None:
    policy = guess.labels
    w(f"[labels]      # {policy['why']}\n")
    if policy["horizon"] is not None:
        w(f"horizon = {json.dumps(format_duration(policy['horizon']))}      # how long a prediction waits for its label\n")
    else:
        w('# horizon = "7d"      # how long a prediction waits for a label sent later\n')
    if policy["default"] == "drop":
        w('default = "drop"      # no label by the horizon: learn nothing from the event\n\n')
    else:
        w(f"default = {policy['default']}      # {policy['default_why']}\n\n")
    w("[model]\n")
    counts = policy["values"]
    seen = ", ".join(f"{v} ({counts[v]:,})" for v in sorted(counts)[:6]) or "none"
    w(f"task = {json.dumps(policy['task'])}      # label values seen: {seen}\n")
    w("# spec, publication and metrics: the defaults (docs/config.md, [model])\n\n")


def _features(w: Write, guess: Guess) -> None:
    w("[features]\n")
    w(f"numeric = {quoted(guess.numeric)}\n")
    w(f"categorical = {quoted(guess.one_hot)}      # one-hot by hashing (keys with few values too)\n")
    buckets, why = guess.buckets
    w(f"hash_buckets = {buckets}      # {why}\n")
    if guess.collisions:
        shares = ", ".join(f"{name} {share:.0%}" for name, share in guess.collisions.items())
        w(f"# values expected to share a bucket with another: {shares} (`appliance stats` measures them)\n")
    rates, rates_why = guess.label_rates
    w(f"label_rates = {'true' if rates else 'false'}      # {rates_why}\n")
    days = guess.profile.span / 86400
    daily = days >= 2
    w(f"time_of_day = {'true' if daily else 'false'}      # the file spans {days:.1f} days: "
      f"{'daily cycles can be learned' if daily else 'too short to see a daily cycle'}\n")
    amount, amount_why = guess.amount
    if amount:
        w(f'# Sums and means are of "{amount}": {amount_why}.\n')
    w("\n")


class Planned(NamedTuple):
    """One aggregate the starter writes; the budget drops the highest `rank` (least needed) first."""

    name: str
    key: str
    op: str
    window: float | None = None
    field: str | None = None
    rank: int = 0


def plan_aggregates(guess: Guess) -> list[Planned]:
    """Per key: a count at every window scale and the time since its last event; the amount's sum over
    the shortest and mean over the longest window; distinct values of another key over the longest
    window (and the burst one, if any). Past MAX_AGGREGATES, the burst distinct counts, then the
    middle-scale counts, then the other distinct counts go, from the last keys first (MAX_KEYS x 5
    are left at worst): every window is state updated on each event."""
    amount = guess.amount[0]
    by_size = sorted(guess.keys, key=lambda k: -guess.profile.fields[k].distinct)
    planned: list[Planned] = []
    for key in guess.keys:
        windows = guess.windows[key]
        name, short, long = _slug(key), windows.shortest, windows.longest
        for i, scale in enumerate(windows.scales):
            middle = 0 < i < len(windows.scales) - 1
            planned.append(Planned(f"{name}_events_{format_duration(scale)}", key, "count", scale, rank=2 if middle else 0))
        planned.append(Planned(f"{name}_since_last", key, "since"))
        if amount:
            planned.append(Planned(f"{name}_{_slug(amount)}_sum_{format_duration(short)}", key, "sum", short, amount))
            planned.append(Planned(f"{name}_{_slug(amount)}_mean_{format_duration(long)}", key, "mean", long, amount))
        other = next((k for k in by_size if k != key), None)
        if other:
            if len(windows.scales) == 3:  # a burst window: how many others within it
                planned.append(Planned(f"{name}_{_slug(other)}s_{format_duration(short)}", key, "distinct", short,
                                       other, rank=1))
            planned.append(Planned(f"{name}_{_slug(other)}s_{format_duration(long)}", key, "distinct", long, other,
                                   rank=3))
    for rank in (1, 2, 3):
        while len(planned) > MAX_AGGREGATES and any(a.rank == rank for a in planned):
            last = max(i for i, a in enumerate(planned) if a.rank == rank)
            del planned[last]
    return planned


def _aggregates(w: Write, guess: Guess) -> None:
    amount = guess.amount[0]
    planned = plan_aggregates(guess)
    for key in guess.keys:
        w(f"# {key}: {guess.windows[key].why}\n")
        for agg in planned:
            if agg.key == key:
                _agg(w, agg.name, key, agg.op, format_duration(agg.window) if agg.window else None, agg.field)
    if amount and guess.keys:
        key = guess.keys[0]
        mean = f"{_slug(key)}_{_slug(amount)}_mean_{format_duration(guess.windows[key].longest)}"
        w("[[features.expression]]\n")
        w(f'name = "{_slug(amount)}_vs_{_slug(key)}_mean"\n')
        w(f'expr = "{amount} / (abs({mean}) + 1)"\n\n' if _plain(amount) else f"# {amount} is not a plain name\n\n")
    first = guess.keys[0] if guess.keys else "entity_id"
    w("# Static attributes per entity from a CSV, joined by key (see docs/config.md):\n")
    w(f'# [[features.attributes]]\n# name = "{_slug(first)}"\n# key = "{first}"\n')
    w('# path = "attributes.csv"\n# numeric = ["age_days"]\n# categorical = ["segment"]\n\n')
    w("# Your own Python: function(event, features) -> number or None, from a module beside this file:\n")
    w('# [[features.custom]]\n# name = "my_score"\n# function = "my_features:my_score"\n\n')


def _retention(w: Write, guess: Guess) -> None:
    days = int(guess.profile.span // 86400) + 1
    keep = max(90, days)
    why = "the default" if keep == 90 else f"the file spans {days} days: keep all of it for export"
    w("[retention]\n")
    w(f'keep = "{keep}d"      # event time of history kept in the store: {why}\n\n')


def _agg(w: Write, name: str, key: str, op: str, window: str | None = None, field: str | None = None) -> None:
    w("[[features.aggregate]]\n")
    w(f"name = {json.dumps(name)}\nkey = {json.dumps(key)}\nop = \"{op}\"\n")
    if field:
        w(f"field = {json.dumps(field)}\n")
    if window:
        w(f'window = "{window}"\n')
    w("\n")


def _slug(name: str) -> str:
    short = re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_") or "f"
    short = short.removesuffix("_id") or short
    return short if short[0].isalpha() else f"f_{short}"


def _plain(name: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) is not None
