"""The model registry, read from the store: every version ever published, and the audit trail.

The engine writes both (the `models` and `audit` tables); this module reads them, for the
CLI and for export, and thins them (`thin_models`, run by the store writer at a checkpoint): every
version keeps its row and metrics, but only the versions that can still serve keep their model
bytes. Which version serves is the engine's to change: the CLI asks a running appliance over the
socket (`promote`, `rollback`, `publishing`), and the engine logs what it did.
"""

from __future__ import annotations

import io
import sqlite3
import zipfile
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from appliance.errors import ConfigError, NotFound

if TYPE_CHECKING:  # only annotations: a serving child imports this module, never sqlite_utils (~0.3 s)
    import sqlite_utils

SERVING_ACTIONS = ("serve", "publish", "promote", "rollback")
PINNING_ACTIONS = ("import",)  # versions an operator brought in: their bytes are never thinned
EXPORT_FORMAT = "appliance-model/1"
KEEP_MODELS = 20  # `[retention] keep_models`: the newest published versions whose model bytes stay


def thin_models(conn: sqlite3.Connection, keep_newest: int, needed: tuple[int, ...] = ()) -> ThinnedModels:
    """Drop the model bytes of every version that can no longer serve; keep each version's row.

    Kept: the newest `keep_newest` versions, the versions in `needed` (what the engine serves,
    rolls back to, or runs as a candidate), the version serving as of the last audit row, and
    every imported version (pinned by the operator). Runs in the caller's transaction (the store
    writer's checkpoint); the freed pages go to the freelist, which the byte bound counts.
    """
    kept = kept_model_versions(conn, keep_newest, needed)
    where = f"WHERE model IS NOT NULL AND version NOT IN ({', '.join('?' for _ in kept)})"
    columns = [row[1] for row in conn.execute("PRAGMA table_info(models)") if row[1] != "model"]
    names = ", ".join(f"[{column}]" for column in columns)
    rows = conn.execute(f"SELECT {names} FROM models {where}", kept).fetchall()
    # Deleted and written again without the bytes, not updated in place: an UPDATE that shrinks a
    # row leaves its page as sparse as before (one version a page), a DELETE lets SQLite merge them.
    conn.execute(f"DELETE FROM models {where}", kept)
    conn.executemany(f"INSERT INTO models ({names}) VALUES ({', '.join('?' for _ in columns)})", rows)
    return ThinnedModels(thinned=len(rows), kept=kept)


def kept_model_versions(conn: sqlite3.Connection, keep_newest: int, needed: tuple[int, ...] = ()) -> tuple[int, ...]:
    """The versions whose model bytes `thin_models` keeps, ascending."""
    newest = [row[0] for row in conn.execute("SELECT version FROM models ORDER BY version DESC LIMIT ?",
                                             (keep_newest,))]
    serving = conn.execute(f"SELECT version FROM audit WHERE action IN ({', '.join('?' for _ in SERVING_ACTIONS)}) "
                           "ORDER BY id DESC LIMIT 1", SERVING_ACTIONS).fetchall()
    pinned = conn.execute(f"SELECT version FROM audit WHERE version IS NOT NULL AND action IN "
                          f"({', '.join('?' for _ in PINNING_ACTIONS)})", PINNING_ACTIONS).fetchall()
    return tuple(sorted({*newest, *needed, *(row[0] for row in serving), *(row[0] for row in pinned)}))


class ThinnedModels(NamedTuple):
    """What one `thin_models` pass did: how many versions lost their bytes, which keep them."""

    thinned: int
    kept: tuple[int, ...]


def thinned_error(db: sqlite_utils.Database, number: int, action: str) -> str:
    """The message for an `action` (rollback, promote, export) on a version whose bytes were thinned."""
    kept = [row[0] for row in db.execute("SELECT version FROM models WHERE model IS NOT NULL ORDER BY version")]
    return (f"{action}: v{number} is in the registry (its row and metrics) but its model was thinned "
            f"([retention] keep_models); the versions whose models are kept: "
            + ", ".join(f"v{version}" for version in kept))


_VERSION_COLUMNS = ("SELECT version, spec, parent, n_learned, event_ts, wall_ts, metrics, candidate, "
                    "length(model) AS bytes FROM models")


def versions(db: sqlite_utils.Database, newest: int | None = None) -> list[dict[str, Any]]:
    """Registered versions, oldest first: every one, or the `newest` N; without the serialized model
    (`bytes` None: thinned)."""
    if newest is None:
        rows = list(db.query(f"{_VERSION_COLUMNS} ORDER BY version"))
    else:
        rows = list(db.query(f"{_VERSION_COLUMNS} ORDER BY version DESC LIMIT ?", [newest]))[::-1]
    return [_version_row(row) for row in rows]


def version_count(db: sqlite_utils.Database) -> int:
    """How many versions the registry holds."""
    return int(db.execute("SELECT count(*) FROM models").fetchone()[0])


def _version_row(row: dict[str, Any]) -> dict[str, Any]:
    return dict(row, metrics=orjson.loads(row["metrics"] or "{}"))


def served_version(db: sqlite_utils.Database) -> int | None:
    """The version serving as of the last committed audit row (None for an empty store)."""
    marks = ", ".join("?" for _ in SERVING_ACTIONS)
    row = db.execute(f"SELECT version FROM audit WHERE action IN ({marks}) ORDER BY id DESC LIMIT 1",
                     SERVING_ACTIONS).fetchone()
    return row[0] if row else None


def audit(db: sqlite_utils.Database, version: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The newest audit rows (for one version if given), newest first."""
    where, args = ("WHERE version = ?", [version]) if version is not None else ("", [])
    return list(db.query(f"SELECT * FROM audit {where} ORDER BY id DESC LIMIT ?", [*args, limit]))


def version(db: sqlite_utils.Database, number: int) -> dict[str, Any]:
    """One version's metadata, or NotFound."""
    for row in db.query(f"{_VERSION_COLUMNS} WHERE version = ?", [number]):
        return _version_row(row)
    raise NotFound(f"no model version {number} in the registry")


def model_blob(db: sqlite_utils.Database, number: int) -> bytes | None:
    """The pickled model of one version (read by the engine, from its own store only)."""
    row = db.execute("SELECT model FROM models WHERE version = ?", [number]).fetchone()
    return row[0] if row else None


def staged_imports(db: sqlite_utils.Database, after: int) -> list[tuple]:
    """Imports staged by `stage_import` with an id above `after`: (id, path, meta json, pickled model)."""
    return db.execute("SELECT id, path, meta, model FROM model_imports WHERE id > ? ORDER BY id",
                      [after]).fetchall()


def export_version(db: sqlite_utils.Database, number: int, out: str) -> dict[str, Any]:
    """Write one version to a zip: `meta.json` (spec, lineage, metrics) and `model.pkl`.

    The pickle is River's own model object; load such a file only if you trust where it came from.
    """
    meta = version(db, number)
    blob = model_blob(db, number)
    if blob is None:
        raise NotFound(thinned_error(db, number, "export"))
    meta = {"format": EXPORT_FORMAT, **{k: v for k, v in meta.items() if k != "bytes"}}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("meta.json", orjson.dumps(meta, option=orjson.OPT_INDENT_2))
        archive.writestr("model.pkl", blob)
    with open(out, "wb") as handle:
        handle.write(buffer.getvalue())
    return meta


def stage_import(db: sqlite_utils.Database, path: str, task: str, *, now: float) -> dict[str, Any]:
    """Check a file written by `export_version` and stage it in the store for the engine to register.

    The operator names the file; it is unpickled here, on this machine, to check that it is a model
    for this task, and the engine loads it from the store (never from the socket).
    """
    from appliance.storage.snapshot import load_object

    try:
        with zipfile.ZipFile(path) as archive:
            meta = orjson.loads(archive.read("meta.json"))
            blob = archive.read("model.pkl")
    except (OSError, KeyError, zipfile.BadZipFile, orjson.JSONDecodeError) as exc:
        raise ConfigError(f'"{path}" is not a model exported by `appliance models export`: {exc}') from None
    if meta.get("format") != EXPORT_FORMAT or not isinstance(meta.get("spec"), str):
        raise ConfigError(f'"{path}" has format {meta.get("format")!r}; expected {EXPORT_FORMAT!r}')
    model = load_object(blob)  # a file the operator named on the command line
    needed = "predict_proba_one" if task == "classification" else "predict_one"
    learns = callable(getattr(model, "learn_one", None)) or getattr(model, "frozen", False)
    if not callable(getattr(model, needed, None)) or not learns:
        raise ConfigError(f'"{path}" holds a {type(model).__name__}, not a River model for {task} '
                          f"(it needs {needed} and learn_one)")
    db["model_imports"].insert({"path": str(path), "meta": orjson.dumps(meta).decode(), "model": blob,
                                "wall_ts": now})
    return meta


def stage_model(db: sqlite_utils.Database, model: Any, meta: dict[str, Any], path: str, *, now: float) -> None:
    """Stage a model built on this machine (an offline ONNX model) for the engine to register."""
    from appliance.storage.snapshot import dump_object

    db["model_imports"].insert({"path": str(path), "meta": orjson.dumps(meta).decode(),
                                "model": dump_object(model), "wall_ts": now})
