"""Static entity attributes: a CSV per table, loaded into SQLite in versions, joined by key.

A table such as ``drivers.csv`` (driver_id, rating, vehicle) is declared in ``[[features.attributes]]``.
`load_csv` copies the file into the store as a new *version* (only if its content changed).
The engine applies the newest version between two events and logs the switch with the event
sequence number it took effect at (`attribute_switches`), so every event is scored with the
attributes it was really scored with, and export replays the same switches at the same points.

In memory a table is one dict entity -> tuple of values, replaced whole on a switch: readers on
the socket thread see the old or the new table, never half of each.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from appliance.config.file import AttributeSpec
from appliance.errors import ConfigError

if TYPE_CHECKING:  # only annotations: a serving child reads tables without importing it (~0.3 s)
    import sqlite_utils

BATCH = 5000


@dataclass(frozen=True)
class AttributeTable:
    """One version of one table, in memory: entity -> (numeric values..., categorical values...)."""

    spec: AttributeSpec
    version: int
    rows: dict[str, tuple]

    @classmethod
    def empty(cls, spec: AttributeSpec) -> AttributeTable:
        return cls(spec, 0, {})


def read_csv(spec: AttributeSpec, path: str | Path) -> tuple[dict[str, tuple], str]:
    """Parse a table's CSV into {entity: values}; return it with the file's sha256.

    Numeric cells that are empty become missing; any other non-number is an error naming the line.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f'attributes "{spec.name}": cannot read "{path}": {exc.strerror}') from None
    digest = hashlib.sha256(data).hexdigest()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    reader = csv.DictReader(data.decode("utf-8-sig").splitlines())
    header = reader.fieldnames or []
    for column in (spec.key_column, *spec.numeric, *spec.categorical):
        if column not in header:
            raise ConfigError(f'attributes "{spec.name}": "{path}" has no column "{column}" '
                              f'(columns: {", ".join(header)})')
    rows: dict[str, tuple] = {}
    for line, record in enumerate(reader, start=2):
        entity = (record.get(spec.key_column) or "").strip()
        if not entity:
            raise ConfigError(f'attributes "{spec.name}": "{path}" line {line} has no {spec.key_column}')
        values: list[Any] = []
        for column in spec.numeric:
            cell = (record.get(column) or "").strip()
            if not cell:
                values.append(None)
                continue
            try:
                number = float(cell)
            except ValueError:
                raise ConfigError(f'attributes "{spec.name}": "{path}" line {line}: {column} = '
                                  f'{cell!r} is not a number') from None
            values.append(number if math.isfinite(number) else None)
        for column in spec.categorical:
            cell = (record.get(column) or "").strip()
            values.append(cell or None)
        rows[entity] = tuple(values)
    return rows, digest


def load_csv(db: sqlite_utils.Database, spec: AttributeSpec, path: str | Path, *, now: float) -> tuple[int, bool]:
    """Store the CSV as a new version unless it equals the newest one; return (version, changed)."""
    rows, digest = read_csv(spec, path)
    latest = latest_version(db, spec.name)
    if latest is not None and latest["sha256"] == digest:
        return latest["version"], False
    version = 1 if latest is None else latest["version"] + 1
    with db.conn:
        db["attribute_rows"].insert_all(
            ({"name": spec.name, "version": version, "entity": entity, "vals": orjson.dumps(values).decode()}
             for entity, values in rows.items()), batch_size=BATCH)
        db["attribute_versions"].insert({"name": spec.name, "version": version, "path": str(path),
                                         "sha256": digest, "rows": len(rows), "loaded_at": now})
    return version, True


def latest_version(db: sqlite_utils.Database, name: str) -> dict | None:
    found = list(db.query("SELECT version, sha256, rows, loaded_at FROM attribute_versions WHERE name = ? "
                          "ORDER BY version DESC LIMIT 1", [name]))
    return found[0] if found else None


def read_version(db: sqlite_utils.Database, spec: AttributeSpec, version: int) -> AttributeTable:
    """Load one stored version of a table into memory."""
    cursor = db.execute("SELECT entity, vals FROM attribute_rows WHERE name = ? AND version = ?",
                        [spec.name, version])
    return AttributeTable(spec, version, {entity: tuple(orjson.loads(vals)) for entity, vals in cursor})


def switches(db: sqlite_utils.Database) -> list[tuple[int, str, int]]:
    """Return every applied switch as (seq, name, version), in the order the engine applied them."""
    return [tuple(row) for row in db.execute(
        "SELECT seq, name, version FROM attribute_switches ORDER BY seq, name")]
