"""How a foreign events file is laid out: its records (JSONL or CSV, gzip ok), which field is the
event id, which the event time, and how labels arrive (inline, or as label rows marked by a type
field or by a field of their own naming the event), read from the head of the file.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError, InvalidEvent, SourceError
from appliance.timeutil import parse_timestamp

ID_NAMES = ("event_id", "id", "transaction_id", "txn_id", "request_id", "uuid")


TIME_NAMES = ("ts", "timestamp", "time", "event_time", "created_at", "datetime", "date")


LABEL_NAMES = ("label", "is_fraud", "fraud", "target", "y", "class", "outcome", "clicked", "churned", "late",
               "delayed")


def read_records(path: str) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects or CSV rows of `path` (numbers in CSV converted, empty cells left out)."""
    file = Path(path)
    if not file.exists():
        raise SourceError(f'"{path}" not found')
    opener = gzip.open if file.name.endswith(".gz") else open
    with opener(file, "rt", encoding="utf-8", newline="") as handle:  # type: ignore[operator]
        if file.name.lower().removesuffix(".gz").endswith(".csv"):
            for row in csv.DictReader(handle):
                yield {k: csv_value(v) for k, v in row.items() if k and v not in (None, "")}
            return
        for line in handle:
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                yield value


def csv_value(text: str) -> Any:
    """Return a CSV cell as an int, a float or the text, as a reader of the file would see it."""
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    return int(number) if number.is_integer() and "e" not in text.lower() else number


@dataclass
class Layout:
    """Where the file keeps its event id and time, and how its labels arrive."""

    id_field: str
    time_field: str
    type_field: str | None = None  # label rows are marked by type_field == label_type...
    label_type: str | None = None
    label_by: str = "type"  # ...or ("label_id") by carrying label_id_field, which events lack
    label_id_field: str | None = None
    label_field: str | None = None
    label_time_field: str | None = None
    separate_labels: bool = False
    notes: list[str] = field(default_factory=list)

    def is_label(self, record: dict[str, Any]) -> bool:
        if not self.separate_labels:
            return False
        if self.label_by == "type":
            return record.get(self.type_field) == self.label_type  # type: ignore[arg-type]
        return self.label_id_field in record


def detect_layout(head: list[dict[str, Any]]) -> Layout:
    """Find the id, the time and the shape of label rows in the first records of a file."""
    if not head:
        raise SourceError("the file has no JSON objects or CSV rows to learn the fields from")
    common = _common_fields(head)
    sparse = [len(common & r.keys()) * 2 < len(common) for r in head]
    marker = _type_marker(head, sparse)
    if marker is not None:
        label_rows = [r for r in head if r.get(marker[0]) == marker[1]]
        events = [r for r in head if r.get(marker[0]) != marker[1]]
    else:
        label_rows = [r for r, s in zip(head, sparse) if s]
        events = [r for r, s in zip(head, sparse) if not s]
    id_field = _pick_id(events)
    time_field = _pick_time(events)
    layout = Layout(id_field=id_field, time_field=time_field)
    if label_rows:
        _label_rows_layout(layout, marker, label_rows, events)
    else:
        layout.label_field = _inline_label(events, {id_field, time_field})
    return layout


def as_binary(value: Any) -> bool | None:
    text = str(value).lower()
    return True if text in ("1", "true", "1.0") else False if text in ("0", "false", "0.0") else None


def timestamp_of(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except InvalidEvent:
        return None


def looks_like_time(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return False
    if isinstance(value, (int, float)) and not 1e8 < value < 1e10:  # epoch seconds, 1973..2286
        return False
    if isinstance(value, str) and (len(value) < 8 or not value[:4].isdigit()):
        return False
    return timestamp_of(value) is not None


def _common_fields(rows: list[dict[str, Any]]) -> set[str]:
    seen: dict[str, int] = {}
    for row in rows:
        for name in row:
            seen[name] = seen.get(name, 0) + 1
    return {name for name, n in seen.items() if n * 2 >= len(rows)}


def _type_marker(rows: list[dict[str, Any]], sparse: list[bool]) -> tuple[str, str] | None:
    """A string field with a few values, one of which marks (nearly) exactly the sparse rows."""
    best: tuple[str, str] | None = None
    for name in {n for r in rows[:200] for n, v in r.items() if isinstance(v, str)}:
        values = {r.get(name) for r in rows}
        if not 2 <= len(values) <= 10 or not all(isinstance(v, str) for v in values if v is not None):
            continue
        for value in values:
            marked = [s for r, s in zip(rows, sparse) if r.get(name) == value]
            others = [s for r, s in zip(rows, sparse) if r.get(name) != value]
            marks = marked and others and sum(marked) >= 0.9 * len(marked) and sum(others) <= 0.1 * len(others)
            if marks and (best is None or value == "label"):
                best = (name, str(value))
    return best


def _pick_id(events: list[dict[str, Any]]) -> str:
    fields: dict[str, set] = {}
    for row in events:
        for name, value in row.items():
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                fields.setdefault(name, set()).add(value)
    unique = [n for n, v in fields.items() if len(v) == len(events) and all(n in r for r in events)]
    for name in ID_NAMES:
        if name in unique:
            return name
    named = [n for n in unique if n.lower().endswith(("_id", "id", "_key", "uuid"))]
    if named or unique:
        return (named or unique)[0]
    raise ConfigError("no event id field found (a field whose values are all distinct, like event_id); "
                      "add one to your events: predictions and labels are joined by it")


def _pick_time(events: list[dict[str, Any]]) -> str:
    timed = [n for n in dict.fromkeys(k for r in events for k in r)
             if all(n in r and looks_like_time(r[n]) for r in events)]
    for name in TIME_NAMES:
        if name in timed:
            return name
    if timed:
        return timed[0]
    raise ConfigError("no timestamp field found (ISO-8601 text or epoch seconds); events need their event time")


def _label_rows_layout(layout: Layout, marker: tuple[str, str] | None, label_rows: list[dict[str, Any]],
                       events: list[dict[str, Any]]) -> None:
    event_ids = {str(r[layout.id_field]) for r in events if layout.id_field in r}
    event_fields = {n for r in events for n in r}
    candidates = [n for n in dict.fromkeys(k for r in label_rows for k in r) if marker is None or n != marker[0]]
    overlap = {n: sum(str(r[n]) in event_ids for r in label_rows if n in r) for n in candidates}
    label_id = max(candidates, key=lambda n: overlap[n], default=None)
    if label_id is None or overlap[label_id] == 0:
        layout.label_field = _inline_label(events, {layout.id_field, layout.time_field})
        if marker is not None:  # unmarked sparse rows naming no event are events with missing fields
            layout.notes.append(f'rows with {marker[0]} = "{marker[1]}" look like labels, but none names an '
                                "event seen before it; they are read as events")
        return
    if marker is None and label_id in event_fields:
        layout.notes.append(f'rows with few fields look like labels naming events by "{label_id}", but nothing '
                            "tells them from events: add a type field, or name their event field differently")
        layout.label_field = _inline_label(events, {layout.id_field, layout.time_field})
        return
    layout.separate_labels = True
    layout.label_id_field = label_id
    if marker is not None:
        layout.type_field, layout.label_type = marker
    else:
        layout.label_by = "label_id"
    timed = [n for n in candidates if n != label_id and all(n in r and looks_like_time(r[n]) for r in label_rows)]
    layout.label_time_field = layout.time_field if layout.time_field in timed else (timed[0] if timed else None)
    rest = [n for n in candidates if n not in (label_id, layout.label_time_field)]
    named = [n for n in LABEL_NAMES if n in rest]
    layout.label_field = named[0] if named else min(rest, key=lambda n: len({str(r.get(n)) for r in label_rows}),
                                                    default=None)


def _inline_label(events: list[dict[str, Any]], used: set[str]) -> str | None:
    names = [n for n in dict.fromkeys(k for r in events for k in r) if n not in used]
    for name in LABEL_NAMES:
        if name in names:
            return name
    binary = [n for n in names if {str(r.get(n)).lower() for r in events if n in r} <= {"0", "1", "true", "false"}
              and any(token in n.lower() for token in ("label", "target", "fraud", "churn", "click", "late"))]
    return binary[0] if binary else None
