"""What the engine does between two events on an operator's command, and the audit trail.

Commands reach the engine as `control` items from the inbox (or at start-up), so they are ordered
with the stream and replayed with it after a crash: switch to newly loaded attribute tables,
register staged model imports, promote, roll back, pause or resume publication. Every change of
the served version, automatic or not, is written to the `audit` table with who and why. Old
versions and staged imports are read from the store: our own SQLite file, never socket bytes.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from . import attributes, registry
from .versions import Published
from .store import reading
from .snapshot import dump_object, load_object


class EngineCommands:
    """Mixed into `Engine`: uses its config, model, space, rows, counts and watermark."""

    # -- operator commands -----------------------------------------------------------------
    def _control(self, record: dict) -> None:
        command = record.get("control")
        actor = str(record.get("actor") or "operator")
        model = self.model
        if command == "attributes":
            self.refresh_attributes()
        elif command == "import":
            self.import_models()
        elif command == "promote" and record.get("challenger") is not None:
            name = record["challenger"]
            if name not in model.candidates or name == model.champion:
                self._audit("refuse", None, f"promote: {name!r} is not a challenger", actor)
            else:
                self._apply([model.promote_candidate(name, self._event_time(), f"{name} promoted by hand",
                                                     by_policy=False)], actor)
        elif command == "challenge":
            published = self._registered(record.get("version"))
            if published is None:
                self._audit("refuse", record.get("version"), "challenge: not a registered version", actor)
            elif f"v{published.version}" in model.candidates:
                self._audit("refuse", published.version, f"challenge: v{published.version} is already a candidate", actor)
            else:
                self._apply([model.add_challenger(published)], actor)
        elif command == "retire":
            name = record.get("challenger")
            if name not in model.candidates or name == model.champion:
                self._audit("refuse", None, f"retire: {name!r} is not a challenger (the champion cannot retire)", actor)
            else:
                self._apply([model.retire(name, "by hand")], actor)
        elif command == "promote" and record.get("version") is None:
            published = model.publish_now(self._event_time())
            self.rows["models"].append(model_row(published))
            self._audit("promote", published.version, "the learner, published without the gate", actor)
        elif command in ("promote", "rollback"):
            version = record.get("version") if command == "promote" else record.get("version") or model.previous()
            self._switch(command, version, actor)
        elif command in ("pause", "resume"):
            model.paused = command == "pause"
            self._audit(command, None, "automatic publication " + ("paused" if model.paused else "resumed"), actor)

    def import_models(self, db: Any = None) -> list[int]:
        """Register the models `appliance models import` staged in the store; return their versions."""
        with reading(self.config.db, db) as store:
            staged = registry.staged_imports(store, after=self.last_import)
        versions = []
        for import_id, path, meta_text, blob in staged:
            meta = orjson.loads(meta_text)
            model = load_object(blob)  # a file the operator named, staged in our own store
            published = self.model.register(model, meta["spec"], int(meta.get("n_learned") or 0),
                                            meta.get("metrics") or {}, self._event_time(),
                                            candidate=str(meta.get("candidate") or "import"))
            self.rows["models"].append(model_row(published))
            self.last_import = import_id
            self._audit("import", published.version,
                        f"imported from {path} (v{meta.get('version')} there); serve it with promote", "operator")
            versions.append(published.version)
        return versions

    def _switch(self, action: str, version: Any, actor: str) -> None:
        published = self._registered(version)
        if published is None:
            self._audit("refuse", version, f"{action}: version {version} is not in the registry", actor)
            return
        model = self.model
        was = model.served.version
        if published.candidate not in model.candidates and getattr(published.model, "frozen", False):
            if f"v{published.version}" not in model.candidates:  # an offline model serves as a frozen champion
                self._apply([model.add_challenger(published)], actor)
            published = Published(**{**published.__dict__, "candidate": f"v{published.version}"})
        model.serve(published)
        if published.candidate in model.candidates:
            model.champion = published.candidate
        self.model.probation = None
        self.drift.reset_concept()
        self._audit(action, published.version, f"{action} from v{was} to v{published.version}", actor)
        if action == "rollback" and not self.model.paused:
            self.model.paused = True  # or the learner that was rolled back would be published again
            self._audit("pause", None, "automatic publication paused by the rollback; resume it by hand", actor)

    def _registered(self, version: Any) -> Published | None:
        """A registered version: from memory if recent, else from the store's registry (our own file)."""
        model = self.model
        if not isinstance(version, int) or version not in model.catalog:
            return None
        if version == model.served.version:
            return model.served
        if version in model.recent:
            return model.recent[version]
        with reading(self.config.db) as store:
            blob = registry.model_blob(store, version)
        if blob is None:
            return None
        return Published(model=load_object(blob), **model.catalog[version])  # the local registry

    # -- the audit trail -------------------------------------------------------------------
    def load_recent_audit(self, db: Any) -> None:
        """After a restore: the newest audit rows are the store's, not this process's first row."""
        self.recent_audit.clear()
        self.recent_audit.extend(reversed(registry.audit(db, limit=self.recent_audit.maxlen or 100)))

    def _audit(self, action: str, version: int | None, reason: str, actor: str) -> None:
        self.audit_seq += 1
        row = {"id": self.audit_seq, "event_ts": self._event_time(), "wall_ts": time.time(), "action": action,
               "version": version, "reason": reason, "actor": actor}
        self.rows["audit"].append(row)
        self.recent_audit.append(row)  # for the console (the store has them all)

    # -- attribute tables ------------------------------------------------------------------
    def refresh_attributes(self, db: Any = None) -> list[tuple[str, int]]:
        """Apply the newest stored version of each attribute table between two events.

        The switch is logged with the sequence number of the last event scored before it, so
        export applies it at the same point. Returns the (table, version) pairs switched to.
        """
        if not self.config.features.attributes:
            return []
        switched = []
        with reading(self.config.db, db) as store:
            for spec in self.config.features.attributes:
                latest = attributes.latest_version(store, spec.name)
                if latest is None or latest["version"] == self.space.attributes[spec.name].version:
                    continue
                self.space.set_attributes(attributes.read_version(store, spec, latest["version"]))
                self.rows["attribute_switches"].append({"seq": self.counts["predictions"], "name": spec.name,
                                                        "version": latest["version"]})
                switched.append((spec.name, latest["version"]))
        return switched

    def attach_attributes(self, db: Any) -> None:
        """After a restore: load the versions the checkpoint was scoring with, then any newer ones."""
        for spec in self.config.features.attributes:
            version = self._restored_attributes.get(spec.name, 0)
            if version:
                self.space.set_attributes(attributes.read_version(db, spec, version))
        self.refresh_attributes(db)


def model_row(published: Published) -> dict:
    """The registry row of a version: metadata and the pickled model."""
    return {"version": published.version, "spec": published.spec, "parent": published.parent,
            "n_learned": published.n_learned, "event_ts": published.event_ts, "wall_ts": published.wall_ts,
            "metrics": orjson.dumps(published.metrics).decode(),
            "model": dump_object(published.model), "candidate": published.candidate}
