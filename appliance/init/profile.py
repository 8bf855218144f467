"""What a file of events looks like, from one streaming pass in bounded memory.

Once `init.layout` has found the file's layout, `profile_stream` reads
the whole file (up to `max_rows`) once and keeps, per field, the counts, types and distinct values
(exactly up to `DISTINCT_CAP`), the gaps between an entity's consecutive events, the time span and
how far events arrive out of order, and the delay from each event to its label. Every collection
is capped, so a file of any size is read in bounded memory.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from appliance.init.layout import Layout, as_binary, looks_like_time, timestamp_of

DISTINCT_CAP = 20_000  # exact distinct values kept per field; beyond, only values already seen count as repeats
SAMPLE_CAP = 100_000  # gaps, lateness and label delays kept per quantity (thinned evenly beyond)
ID_CAP = 200_000  # event ids remembered for the label delay (a hash-sampled subset beyond)








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
                self.times += looks_like_time(value)
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
        ts = timestamp_of(record.get(layout.time_field))
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
        label = as_binary(record.get(layout.label_field)) if not layout.separate_labels else None  # type: ignore[arg-type]
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
    at = timestamp_of(record.get(layout.label_time_field))  # type: ignore[arg-type]
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
















