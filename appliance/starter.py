"""`appliance init`: read a sample of a user's events and write a commented starter config.

The guesses are plain rules a person can check in the file it writes: the id is the field whose
values are all distinct and whose name says id; the time is the field that parses as a timestamp;
entity keys are the other id-like fields that repeat; numbers are numeric fields, categoricals are
strings with few distinct values; the label is a field named like one. Features follow from the
keys and numbers: counts and time-since per key, sums and means of the first amount-like number,
distinct counts of one key per another.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import ConfigError, SourceError
from .timeutil import parse_timestamp

ID_NAMES = ("event_id", "id", "transaction_id", "txn_id", "request_id", "uuid")
TIME_NAMES = ("ts", "timestamp", "time", "event_time", "created_at", "datetime", "date")
LABEL_NAMES = ("label", "is_fraud", "fraud", "target", "y", "class", "outcome", "clicked", "churned")
MAX_CATEGORIES = 50


def read_sample(path: str, limit: int = 2000) -> list[dict[str, Any]]:
    """Return up to `limit` records of a JSONL or CSV file (gzip ok), numbers in CSV converted."""
    file = Path(path)
    if not file.exists():
        raise SourceError(f'"{path}" not found')
    opener = gzip.open if file.name.endswith(".gz") else open
    name = file.name.lower().removesuffix(".gz")
    records: list[dict[str, Any]] = []
    with opener(file, "rt", encoding="utf-8", newline="") as handle:  # type: ignore[operator]
        if name.endswith(".csv"):
            for row in csv.DictReader(handle):
                records.append({k: _csv_value(v) for k, v in row.items() if k and v not in (None, "")})
                if len(records) >= limit:
                    break
        else:
            for line in handle:
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    records.append(value)
                if len(records) >= limit:
                    break
    if not records:
        raise SourceError(f'"{path}" has no JSON objects or CSV rows to learn the fields from')
    return records


def starter_config(path: str, records: list[dict[str, Any]]) -> str:
    """Return the text of a commented `appliance.toml` for events like `records`."""
    fields = _profile(records)
    type_field = "type" if any(r.get("type") == "label" for r in records) else None
    payloads = [r for r in records if type_field is None or r.get(type_field) != "label"]
    id_field = _pick_id(fields, len(payloads))
    time_field = _pick_time(fields)
    label_field = next((n for n in LABEL_NAMES if n in fields), None)
    label_values = {v for r in records if label_field in r for v in [r[label_field]]} if label_field else set()
    binary = bool(label_values) and all(str(v).lower() in ("0", "1", "true", "false", "0.0", "1.0")
                                        for v in label_values)
    used = {id_field, time_field, label_field, type_field}
    keys = [n for n, p in fields.items() if n not in used and p["strings"] and _id_like(n)
            and 1 < p["distinct"] < p["count"]]
    numeric = [n for n, p in fields.items() if n not in used and n not in keys and p["numbers"] == p["count"]]
    categorical = [n for n, p in fields.items() if n not in used and n not in keys and n not in numeric
                   and p["strings"] == p["count"] and p["distinct"] <= MAX_CATEGORIES]
    return _render(path, id_field, time_field, type_field, label_field, binary, keys, numeric, categorical)


def write_starter(events_path: str, out: str, *, force: bool = False) -> str:
    """Write the starter config for `events_path` to `out`; return its text."""
    target = Path(out)
    if target.exists() and not force:
        raise ConfigError(f'"{out}" already exists; pass --force to overwrite it')
    text = starter_config(events_path, read_sample(events_path))
    target.write_text(text, encoding="utf-8")
    return text


def _csv_value(text: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def _profile(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    fields: dict[str, dict[str, Any]] = {}
    for record in records:
        for name, value in record.items():
            p = fields.setdefault(name, {"count": 0, "numbers": 0, "strings": 0, "values": set(), "times": 0})
            p["count"] += 1
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                p["numbers"] += 1
            elif isinstance(value, str):
                p["strings"] += 1
            if len(p["values"]) <= 100_000:
                p["values"].add(json.dumps(value, sort_keys=True))
            if _is_time(value):
                p["times"] += 1
    for p in fields.values():
        p["distinct"] = len(p.pop("values"))
    return fields


def _is_time(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return False
    if isinstance(value, (int, float)) and not 1e8 < value < 1e10:  # epoch seconds, 1973..2286
        return False
    try:
        parse_timestamp(value)
    except Exception:
        return False
    return True


def _id_like(name: str) -> bool:
    lowered = name.lower()
    return lowered.endswith(("_id", "id", "_key")) or lowered in ("user", "card", "device", "account", "customer")


def _pick_id(fields: dict[str, dict[str, Any]], n_events: int) -> str:
    for name in ID_NAMES:
        if name in fields:
            return name
    unique = [n for n, p in fields.items() if _id_like(n) and p["distinct"] >= n_events]
    if unique:
        return unique[0]
    raise ConfigError("no event id field found (a field like event_id whose values are all distinct); "
                      "add one to your events: predictions and labels are joined by it")


def _pick_time(fields: dict[str, dict[str, Any]]) -> str:
    for name in TIME_NAMES:
        if name in fields and fields[name]["times"] == fields[name]["count"]:
            return name
    timed = [n for n, p in fields.items() if p["times"] == p["count"] and p["strings"]]
    if timed:
        return timed[0]
    raise ConfigError("no timestamp field found (ISO-8601 text or epoch seconds); events need their event time")


def _q(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _render(path: str, id_field: str, time_field: str, type_field: str | None, label_field: str | None,
            binary: bool, keys: list[str], numeric: list[str], categorical: list[str]) -> str:
    out = io.StringIO()
    w = out.write
    w(f"# Starter config written by `appliance init {path}`. Check every guess, then run\n")
    w("#   appliance replay --config appliance.toml     # learn from the history, as fast as possible\n")
    w("#   appliance up --config appliance.toml         # then serve predictions on ./appliance.sock\n")
    w("# docs/config.md explains every key.\n\n")
    w("[source]\n")
    w(f"spec = {json.dumps(str(Path(path).resolve()))}\n")
    w("speed = 0                # event-time replay speed for `up`; 0 = as fast as possible\n\n")
    w("[event]\n")
    w(f"id = {json.dumps(id_field)}      # unique per event; labels name events by it\n")
    w(f"time = {json.dumps(time_field)}      # event time: ISO-8601 or epoch seconds\n")
    if type_field:
        w(f'type = "{type_field}"      # events with type = "label" are labels for an earlier event\n')
        w('label_type = "label"\n')
    else:
        w('type = "type"      # events with type = "label" carry a label for an earlier event id\n')
    w(f"label = {json.dumps(label_field or 'label')}" + ("" if label_field else "      # no label field seen; set it")
      + "\n")
    w(f"keys = {_q(keys)}      # entities that features are kept for\n")
    w(f"numeric = {_q(numeric)}\n")
    w(f"categorical = {_q(categorical)}\n")
    w("# optional = []      # fields that may be missing (others are required)\n")
    w('allowed_lateness = "5m"      # events older than the newest minus this go to dead_letters\n\n')
    w("[labels]\n")
    w('horizon = "7d"      # how long a prediction waits for its label\n')
    w('default = "drop"    # no label by the horizon: "drop", or a value to learn, e.g. 0\n\n')
    w("[model]\n")
    w(f'task = "{"classification" if binary or not label_field else "regression"}"\n')
    w("# spec = \"appliance.ScaleNumeric() | linear_model.LogisticRegression()\"\n")
    w("publish_every = 500      # labels between two publication checks\n")
    w("publish_margin = 0.01    # the learner may be this much worse than the served model and still publish\n")
    w("metric_window = 1000\n\n")
    w("[features]\n")
    w(f"numeric = {_q(numeric)}\n")
    w(f"categorical = {_q(categorical)}      # one-hot by hashing: unseen values need no retraining\n")
    w("hash_buckets = 16\n")
    w("time_of_day = true\n\n")
    amount = next((n for n in numeric if any(k in n.lower() for k in ("amount", "price", "value", "total"))),
                  numeric[0] if numeric else None)
    for key in keys:
        short = key.removesuffix("_id")
        w(f"# {key}\n")
        _agg(w, f"{short}_events_1h", key, "count", "1h")
        _agg(w, f"{short}_events_1d", key, "count", "1d")
        _agg(w, f"{short}_since_last", key, "since")
        if amount:
            _agg(w, f"{short}_{amount}_sum_1h", key, "sum", "1h", amount)
            _agg(w, f"{short}_{amount}_mean_7d", key, "mean", "7d", amount)
        other = next((k for k in keys if k != key), None)
        if other:
            _agg(w, f"{short}_{other.removesuffix('_id')}s_1d", key, "distinct", "1d", other)
    if amount and keys:
        short = keys[0].removesuffix("_id")
        w("[[features.expression]]\n")
        w(f'name = "{amount}_vs_{short}_mean"\n')
        w(f'expr = "{amount} / ({short}_{amount}_mean_7d + 1)"\n\n')
    first_key = keys[0] if keys else "entity_id"
    w("# Static attributes per entity from a CSV, joined by key (see docs/config.md):\n")
    w(f'# [[features.attributes]]\n# name = "{first_key.removesuffix("_id")}"\n# key = "{first_key}"\n')
    w('# path = "attributes.csv"\n# numeric = ["age_days"]\n# categorical = ["segment"]\n\n')
    w("# Your own Python: function(event, features) -> number or None, from a module beside this file:\n")
    w('# [[features.custom]]\n# name = "my_score"\n# function = "my_features:my_score"\n\n')
    w("[retention]\n")
    w('keep = "90d"             # event time of history kept in the store; "forever" keeps everything\n\n')
    w("[serve]\n")
    w('socket = "appliance.sock"\n')
    w('db = "appliance.db"\n')
    return out.getvalue()


def _agg(w: Any, name: str, key: str, op: str, window: str | None = None, field: str | None = None) -> None:
    w("[[features.aggregate]]\n")
    w(f'name = "{name}"\nkey = "{key}"\nop = "{op}"\n')
    if field:
        w(f'field = "{field}"\n')
    if window:
        w(f'window = "{window}"\n')
    w("\n")
