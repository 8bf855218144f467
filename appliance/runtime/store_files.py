"""What a store is made of: its files, the fingerprint of what its state depends on, the attribute
files loaded into it at start, and the warning for a model that would ignore the hashed categoricals."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from appliance.config.file import Config
from appliance.config.model_spec import DEFAULT_MODELS, zeroing_warning
from appliance.errors import ConfigError
from appliance.features import attributes
from appliance.features.space import HASH
from appliance.storage.snapshot import FORMAT_VERSION, ROWS_FORMAT

log = logging.getLogger(__name__)


def fingerprint(config: Config, format_version: int = FORMAT_VERSION, rows_format: int = ROWS_FORMAT) -> str:
    """Return a digest of what entity state and models depend on: schema, features, model, on-disk format."""
    text = repr((config.event, config.features, config.model.task, config.model.spec))
    text += f" format {format_version}"  # a store written in another on-disk format is refused, not misread
    text += f" rows {rows_format}"  # and one whose logged rows (and waiting predictions) are in another layout
    if config.features.categorical or any(spec.categorical for spec in config.features.attributes):
        text += HASH  # hashed feature names change with the hash: a store from crc32 days is refused
    if config.features.label_rates:
        text += "+label_rates"
    if config.features.label_means:
        text += "+label_means"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def warn_zeroing(config: Config) -> list[str]:
    """Warn (log, once per start) about each model spec that will ignore the hashed categoricals."""
    if not (config.features.categorical or any(spec.categorical for spec in config.features.attributes)):
        return []
    task = config.model.task
    specs = [("[model] spec", config.model.spec or DEFAULT_MODELS[task])]
    specs += [(f'[[model.challenger]] "{c.name}"', c.spec) for c in config.model.challengers]
    if config.lifecycle.challenger_spec:
        specs.append(("[lifecycle] challenger_spec", config.lifecycle.challenger_spec))
    warnings = [w for what, spec in specs if (w := zeroing_warning(spec, task, what)) is not None]
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def load_attribute_files(config: Config, db: Any) -> list[tuple[str, int, bool]]:
    """Copy each declared attribute CSV into the store as a new version if its content changed.

    Returns (table, version, changed) per table. A missing file is only an error when the store
    holds no version of that table yet; otherwise the stored version goes on serving.
    """
    loaded = []
    for spec in config.features.attributes:
        try:
            version, changed = attributes.load_csv(db, spec, spec.path, now=time.time())
        except ConfigError:
            latest = attributes.latest_version(db, spec.name)
            if latest is None or Path(spec.path).exists():
                raise
            log.warning('attributes "%s": "%s" is gone; serving stored version %d', spec.name, spec.path,
                        latest["version"])
            version, changed = latest["version"], False
        loaded.append((spec.name, version, changed))
    return loaded


def store_files(db_path: str) -> list[Path]:
    """Return the files that make up a store: the database, its WAL, the inbox logs and the order log."""
    return [Path(db_path + suffix) for suffix in ("", "-wal", "-shm", "-inbox", "-order")] + child_inboxes(db_path)


def child_inboxes(db_path: str) -> list[Path]:
    """The serving children's inboxes (`<db>-inbox-<n>`) present, those of an earlier start with more too."""
    base = Path(db_path)
    found = [p for p in base.parent.glob(base.name + "-inbox-*") if p.name.rsplit("-", 1)[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[-1]))
