"""Input readers: where events come from, each item tagged with a resumable offset.

A reader yields `(offset, payload)` where `offset` counts what has been consumed including this
item, so resuming at `offset` skips exactly what was processed. Payloads are JSON lines (bytes) or
dicts (CSV rows, River datasets). Readers know nothing of Bytewax; `dataflows.sources` wraps them.

Source specs:
    path.jsonl | path.ndjson | path.json  (optionally .gz)   JSON Lines, offset = line number
    path.csv (optionally .gz)                                  CSV with a header, offset = row number
    -                                                          standard input (not resumable)
    river:Phishing                                             a dataset that River ships
    sample                                                     the bundled ride-hailing payments
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from appliance.config.file import EventSchema
from appliance.errors import SourceError

RIVER_PREFIX = "river:"


def resolve_source(spec: str) -> str:
    """Return a canonical spelling of a source spec (absolute path for files)."""
    if spec == "sample":
        import sample_data

        return str(sample_data.EVENTS)
    if spec == "-" or spec.startswith(RIVER_PREFIX):
        return spec
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError(f'source "{spec}" not found; give a JSONL or CSV file, "-", or river:NAME')
    return str(path.resolve())


def read_source(spec: str, schema: EventSchema, task: str, start: int = 0) -> Iterator[tuple[int, Any]]:
    """Yield `(offset, payload)` from a resolved source spec, skipping the first `start` items."""
    if spec.startswith(RIVER_PREFIX):
        return _read_river(spec[len(RIVER_PREFIX):], start)
    if spec == "-":
        return _read_lines(sys.stdin.buffer, start) if start == 0 else _refuse_resume()
    name = spec.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return _read_csv(spec, schema, task, start)
    return _read_jsonl(spec, start)


def _refuse_resume() -> Iterator[tuple[int, Any]]:
    raise SourceError("standard input cannot be resumed; start with --fresh or use a file")


def _open(path: str) -> IO[bytes]:
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the generator that reads it
    except OSError as exc:
        raise SourceError(f'cannot open source "{path}": {exc.strerror}') from None
    return gzip.open(raw) if path.endswith(".gz") else raw  # type: ignore[return-value]


def _read_jsonl(path: str, start: int) -> Iterator[tuple[int, Any]]:
    with _open(path) as handle:
        yield from _read_lines(handle, start)


def _read_lines(handle: IO[bytes], start: int) -> Iterator[tuple[int, Any]]:
    offset = 0
    for line in handle:
        offset += 1
        if offset <= start:
            continue
        line = line.strip()
        if line:
            yield offset, line


def _read_csv(path: str, schema: EventSchema, task: str, start: int) -> Iterator[tuple[int, Any]]:
    numbers = set(schema.numeric) | ({schema.label_field} if task == "regression" else set())
    with _open(path) as handle:
        reader = csv.DictReader(io.TextIOWrapper(handle, encoding="utf-8", newline=""))
        for offset, row in enumerate(reader, start=1):
            if offset > start:
                yield offset, _typed_row(row, numbers, schema.time_field)


def _typed_row(row: dict[str, str], numbers: set[str], time_field: str) -> dict[str, Any]:
    typed: dict[str, Any] = {}
    for name, value in row.items():
        if value is None or value == "":
            continue
        if name in numbers or name == time_field:
            typed[name] = _maybe_number(value)
        else:
            typed[name] = value
    return typed


def _maybe_number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _read_river(name: str, start: int) -> Iterator[tuple[int, Any]]:
    dataset = river_dataset(name)
    for index, (x, y) in enumerate(dataset):
        if index < start:
            continue
        yield index + 1, {"event_id": str(index), "ts": float(index), **x, "label": y}


def river_dataset(name: str) -> Any:
    """Return an instance of `river.datasets.<name>`, or raise a clear error."""
    from river import datasets

    cls = getattr(datasets, name, None)
    if cls is None or not isinstance(cls, type) or name.startswith("_"):
        known = sorted(n for n in dir(datasets) if n[:1].isupper())
        raise SourceError(f'River has no dataset "{name}"; some it has: {", ".join(known[:12])}')
    try:
        return cls()
    except Exception as exc:  # a dataset that needs a download cannot run offline
        raise SourceError(f'River dataset "{name}" cannot be loaded here: {exc}') from None
