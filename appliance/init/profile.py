"""What a file of events looks like, from one streaming pass in bounded memory.

`read_records` yields the records of a JSONL or CSV file (gzip ok). `detect_layout` looks at the
head of the file for the event id, the event time and how labels arrive (inline, or as label rows
marked by a type field or by a field of their own naming the event). `profile_stream` then reads
the whole file (up to `max_rows`) once and keeps, per field, the counts, types and distinct values
(exactly up to `DISTINCT_CAP`), the gaps between an entity's consecutive events, the time span and
how far events arrive out of order, and the delay from each event to its label. Every collection
is capped, so a file of any size is read in bounded memory.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import math
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError, InvalidEvent, SourceError
from appliance.timeutil import parse_timestamp

ID_NAMES = ("event_id", "id", "transaction_id", "txn_id", "request_id", "uuid")
TIME_NAMES = ("ts", "timestamp", "time", "event_time", "created_at", "datetime", "date")
LABEL_NAMES = ("label", "is_fraud", "fraud", "target", "y", "class", "outcome", "clicked", "churned", "late",
               "delayed")
DISTINCT_CAP = 20_000  # exact distinct values kept per field; beyond, only values already seen count as repeats
SAMPLE_CAP = 100_000  # gaps, lateness and label delays kept per quantity (thinned evenly beyond)
ID_CAP = 200_000  # event ids remembered for the label delay (a hash-sampled subset beyond)


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


@dataclass
class FieldProfile:
    """One field over the event rows: presence, types, distinct values and their recurrence."""

    count: int = 0
    numbers: int = 0
    ints: int = 0
    strings: int = 0
    bools: int = 0
    times: int = 0  # strings that parse as timestamps, among the first events' strings (checked)
    checked: int = 0
    repeats: int = 0  # rows whose value had been seen before
    clock: bool = True  # every value an integer HHMM (0..2400, minutes < 60)...
    hundreds: bool = False  # ...and some past 99
    low: float = math.inf
    high: float = -math.inf
    counts: dict[Any, int] = field(default_factory=dict)
    first_seen: dict[Any, float] = field(default_factory=dict)
    last_seen: dict[Any, float] = field(default_factory=dict)
    entity_gaps: list[tuple[float, Any]] = field(default_factory=list)  # (gap, value), thinned evenly
    gap_stride: int = 1
    saturated: bool = False
    pairs: list[tuple[float, bool]] = field(default_factory=list)  # (value, inline label), thinned evenly
    pair_stride: int = 1

    @property
    def distinct(self) -> int:
        return len(self.counts)

    @property
    def timelike(self) -> bool:
        return self.checked > 0 and self.times == self.checked

    def add(self, value: Any, ts: float | None, check_time: bool) -> None:
        self.count += 1
        if isinstance(value, bool):
            self.bools += 1
        elif isinstance(value, (int, float)):
            self.numbers += 1
            if isinstance(value, int):  # a JSON 1400.0 is a float: the event parser refuses it as an entity key
                self.ints += 1
                self.clock = self.clock and 0 <= value <= 2400 and value % 100 < 60
                self.hundreds = self.hundreds or value >= 100
                self.low = min(self.low, value)
                self.high = max(self.high, value)
            else:
                self.clock = False
        elif isinstance(value, str):
            self.strings += 1
            self.clock = False
            if check_time:
                self.checked += 1
                self.times += _is_time(value)
        else:
            self.clock = False
            return
        seen = self.counts.get(value)
        if seen is not None:
            self.repeats += 1
            self.counts[value] = seen + 1
        elif len(self.counts) < DISTINCT_CAP:
            self.counts[value] = 1
        else:
            self.saturated = True
            return
        if ts is not None:
            last = self.last_seen.get(value)
            if last is None:
                self.first_seen[value] = ts
            elif ts > last:
                self.gap_stride = _keep_sample(self.entity_gaps, (ts - last, value), self.gap_stride, self.count)
            else:
                self.first_seen[value] = min(self.first_seen[value], ts)
            self.last_seen[value] = ts if last is None else max(last, ts)

    @property
    def gaps(self) -> list[float]:
        """Sampled gaps between an entity's consecutive events (seconds)."""
        return [gap for gap, _ in self.entity_gaps]

    def relative_gaps(self) -> list[float]:
        """The sampled gaps, each over its own entity's mean gap (entities with 3+ events): for events
        at random (Poisson) at each entity's own rate, exponential with mean 1 however rates differ."""
        out = []
        for gap, value in self.entity_gaps:
            n, active = self.counts.get(value, 0), self.last_seen[value] - self.first_seen[value]
            if n >= 3 and active > 0:
                out.append(gap * (n - 1) / active)
        return out

    def density(self) -> float:
        """Share of the integers between the lowest and the highest value that occur."""
        return self.distinct / max(1.0, self.high - self.low + 1) if self.high >= self.low else 0.0

    def roughness(self) -> float:
        """Median |log count| step between consecutive values (in numeric order): near 0 for a quantity
        (neighbours are about as frequent), large for codes (flight 1 daily, flight 2 weekly)."""
        ordered = sorted(v for v in self.counts if isinstance(v, (int, float)) and not isinstance(v, bool))
        steps = sorted(abs(math.log(self.counts[a]) - math.log(self.counts[b])) for a, b in itertools.pairwise(ordered))
        return steps[len(steps) // 2] if steps else 0.0


@dataclass
class StreamProfile:
    """The whole pass: rows, the time span, disorder, per-field profiles, label delays."""

    layout: Layout
    rows: int = 0
    events: int = 0
    labels: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    late_rows: int = 0
    lateness: list[float] = field(default_factory=list)
    lateness_stride: int = 1
    delays: list[float] = field(default_factory=list)
    delay_stride: int = 1
    label_values: dict[str, int] = field(default_factory=dict)
    fields: dict[str, FieldProfile] = field(default_factory=dict)
    truncated: bool = False

    @property
    def span(self) -> float:
        return (self.last_ts - self.first_ts) if self.first_ts is not None and self.last_ts is not None else 0.0


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


def profile_stream(records: Iterable[dict[str, Any]], layout: Layout, max_rows: int = 2_000_000) -> StreamProfile:
    """Read `records` once (at most `max_rows`) and profile event rows, label rows and time."""
    profile = StreamProfile(layout=layout)
    ids: dict[str, float] = {}
    id_shift = 0  # event ids are remembered when crc32(id) has id_shift low zero bits
    skip = {layout.id_field, layout.time_field, layout.type_field, layout.label_field}
    for record in records:
        if profile.rows >= max_rows:
            profile.truncated = True
            break
        profile.rows += 1
        if layout.is_label(record):
            _add_label(profile, record, ids, id_shift)
            continue
        ts = _ts(record.get(layout.time_field))
        profile.events += 1
        if ts is not None:
            _add_time(profile, ts)
            event_id = record.get(layout.id_field)
            if event_id is not None and layout.separate_labels and _sampled(str(event_id), id_shift):
                ids[str(event_id)] = ts
                if len(ids) > ID_CAP:
                    id_shift += 1
                    ids = {k: v for k, v in ids.items() if _sampled(k, id_shift)}
        if layout.label_field in record and not layout.separate_labels:
            _count_label(profile, record[layout.label_field])
        check_time = profile.events <= 2000
        fields = profile.fields
        label = _binary(record.get(layout.label_field)) if not layout.separate_labels else None  # type: ignore[arg-type]
        for name, value in record.items():
            if name not in skip:
                field_profile = fields.get(name)
                if field_profile is None:
                    field_profile = fields[name] = FieldProfile()
                field_profile.add(value, ts, check_time)
                if label is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                    field_profile.pair_stride = _keep_sample(field_profile.pairs, (float(value), label),  # type: ignore[arg-type]
                                                             field_profile.pair_stride, profile.events)
    return profile


def quantile(values: list[float], q: float) -> float | None:
    """Return the q-quantile of `values` (nearest rank), None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _add_time(profile: StreamProfile, ts: float) -> None:
    if profile.first_ts is None or ts < profile.first_ts:
        profile.first_ts = ts
    if profile.last_ts is None or ts > profile.last_ts:
        profile.last_ts = ts
    elif ts < profile.last_ts:
        profile.late_rows += 1
        profile.lateness_stride = _keep_sample(profile.lateness, profile.last_ts - ts, profile.lateness_stride,
                                               profile.late_rows)


def _add_label(profile: StreamProfile, record: dict[str, Any], ids: dict[str, float], id_shift: int) -> None:
    layout = profile.layout
    profile.labels += 1
    if layout.label_field in record:
        _count_label(profile, record[layout.label_field])
    event_id = record.get(layout.label_id_field)  # type: ignore[arg-type]
    at = _ts(record.get(layout.label_time_field))  # type: ignore[arg-type]
    if event_id is None or at is None or not _sampled(str(event_id), id_shift):
        return
    scored = ids.pop(str(event_id), None)
    if scored is not None:
        profile.delay_stride = _keep_sample(profile.delays, max(0.0, at - scored), profile.delay_stride,
                                            profile.labels)


def _count_label(profile: StreamProfile, value: Any) -> None:
    key = str(value).lower()
    if key in profile.label_values or len(profile.label_values) < 1000:
        profile.label_values[key] = profile.label_values.get(key, 0) + 1


def _binary(value: Any) -> bool | None:
    text = str(value).lower()
    return True if text in ("1", "true", "1.0") else False if text in ("0", "false", "0.0") else None


def _keep_sample(sample: list[Any], value: Any, stride: int, n: int) -> int:
    """Keep every stride-th value; when the sample is full, drop every other one and double the stride."""
    if n % stride == 0:
        sample.append(value)
        if len(sample) >= SAMPLE_CAP:
            del sample[::2]
            return stride * 2
    return stride


def _sampled(event_id: str, shift: int) -> bool:
    return shift == 0 or zlib.crc32(event_id.encode()) & ((1 << shift) - 1) == 0


def _ts(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except InvalidEvent:
        return None


def _is_time(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return False
    if isinstance(value, (int, float)) and not 1e8 < value < 1e10:  # epoch seconds, 1973..2286
        return False
    if isinstance(value, str) and (len(value) < 8 or not value[:4].isdigit()):
        return False
    return _ts(value) is not None


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
             if all(n in r and _is_time(r[n]) for r in events)]
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
    timed = [n for n in candidates if n != label_id and all(n in r and _is_time(r[n]) for r in label_rows)]
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
