"""What the engine does between two events on an operator's command.

Commands (`commands.Command`) reach the engine as `ControlItem`s from the inbox (or at start-up),
so they are ordered with the stream and replayed with it after a crash: switch to newly loaded
attribute tables, register staged model imports, promote, roll back, pause or resume publication,
put a version up as a challenger, retire one. Every change of the served version is audited by the
engine with who and why. Old versions and staged imports are read from the store: our own SQLite
file, never socket bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import orjson

from appliance.engine.control import (
    Challenge,
    Command,
    ImportModels,
    Promote,
    Publishing,
    RefreshAttributes,
    Retire,
    Rollback,
)
from appliance.features import attributes
from appliance.learning.versions import Published
from appliance.storage import registry
from appliance.storage.snapshot import dump_object, load_object
from appliance.storage.store import reading

if TYPE_CHECKING:
    from appliance.config.file import Config
    from appliance.features.space import FeatureSpace
    from appliance.learning.drift import DriftMonitor
    from appliance.learning.online_model import OnlineModel
    from appliance.learning.versions import Decision


class CommandTarget(Protocol):
    """What a command may use of the engine (`engine.Engine` is one): its parts, and its log."""

    config: Config
    model: OnlineModel
    space: FeatureSpace
    drift: DriftMonitor
    rows: dict[str, list[dict]]
    counts: dict[str, int]
    last_import: int

    def event_time(self) -> float | None: ...
    def apply(self, decisions: list[Decision], actor: str) -> None: ...
    def audit(self, action: str, version: int | None, reason: str, actor: str) -> None: ...
    def log_version(self, published: Published) -> None: ...


class EngineCommands:
    """Applies the operator's commands to one engine: its model, its feature space, its audit trail."""

    def __init__(self, engine: CommandTarget) -> None:
        self.engine = engine

    def apply(self, command: Command) -> None:
        """Apply one command between two events; a command that cannot apply is audited as refused."""
        engine, model, actor = self.engine, self.engine.model, command.actor
        match command:
            case RefreshAttributes():
                self.refresh_attributes()
            case ImportModels():
                self.import_models(actor=actor)
            case Promote(challenger=str() as name):
                if name not in model.candidates or name == model.champion:
                    engine.audit("refuse", None, f"promote: {name!r} is not a challenger", actor)
                else:
                    engine.apply([model.promote_candidate(name, engine.event_time(), f"{name} promoted by hand",
                                                          by_policy=False)], actor)
            case Promote(version=None):
                published = model.publish_now(engine.event_time())
                engine.log_version(published)
                engine.audit("promote", published.version, "the learner, published without the gate", actor)
            case Promote(version=version):
                self._switch("promote", version, actor)
            case Rollback(version=version):
                self._switch("rollback", version if version is not None else model.previous(), actor)
            case Challenge(version=version):
                published = self._registered(version)
                if published is None:
                    engine.audit("refuse", version, "challenge: not a registered version", actor)
                elif published.name in model.candidates:
                    engine.audit("refuse", version, f"challenge: {published.name} is already a candidate", actor)
                else:
                    engine.apply([model.add_challenger(published)], actor)
            case Retire(challenger=name):
                if name not in model.candidates or name == model.champion:
                    engine.audit("refuse", None, f"retire: {name!r} is not a challenger (the champion cannot retire)",
                                 actor)
                else:
                    engine.apply([model.retire(name, "by hand")], actor)
            case Publishing(paused=paused):
                model.set_publishing(paused=paused)
                engine.audit("pause" if paused else "resume", None,
                             "automatic publication " + ("paused" if paused else "resumed"), actor)

    def import_models(self, db: Any = None, actor: str = "operator") -> list[int]:
        """Register the models `appliance models import` staged in the store; return their versions."""
        engine = self.engine
        with reading(engine.config.db, db) as store:
            staged = registry.staged_imports(store, after=engine.last_import)
        versions = []
        for import_id, path, meta_text, blob in staged:
            meta = orjson.loads(meta_text)
            model = load_object(blob)  # a file the operator named, staged in our own store
            published = engine.model.register(model, meta["spec"], int(meta.get("n_learned") or 0),
                                              meta.get("metrics") or {}, engine.event_time(),
                                              candidate=str(meta.get("candidate") or "import"))
            engine.log_version(published)
            engine.last_import = import_id
            engine.audit("import", published.version,
                         f"imported from {path} (v{meta.get('version')} there); serve it with promote", actor)
            versions.append(published.version)
        return versions

    def _switch(self, action: str, version: Any, actor: str) -> None:
        engine, model = self.engine, self.engine.model
        published = self._registered(version)
        if published is None:
            engine.audit("refuse", version, f"{action}: version {version} is not in the registry", actor)
            return
        was = model.served.version
        if published.candidate not in model.candidates and getattr(published.model, "frozen", False):
            if published.name not in model.candidates:  # an offline model serves as a frozen champion
                engine.apply([model.add_challenger(published)], actor)
            published = Published(**{**published.__dict__, "candidate": published.name})
        model.switch_to(published)
        engine.drift.reset_concept()
        engine.audit(action, published.version, f"{action} from v{was} to v{published.version}", actor)
        if action == "rollback" and not model.paused:
            model.set_publishing(paused=True)  # or the learner that was rolled back would be published again
            engine.audit("pause", None, "automatic publication paused by the rollback; resume it by hand", actor)

    def _registered(self, version: Any) -> Published | None:
        """A registered version: from memory if recent, else from the store's registry (our own file)."""
        model = self.engine.model
        if not isinstance(version, int) or version not in model.catalog:
            return None
        if version == model.served.version:
            return model.served
        if version in model.recent:
            return model.recent[version]
        with reading(self.engine.config.db) as store:
            blob = registry.model_blob(store, version)
        if blob is None:
            return None
        return Published(model=load_object(blob), **model.catalog[version])  # the local registry

    # -- attribute tables ------------------------------------------------------------------
    def refresh_attributes(self, db: Any = None) -> list[tuple[str, int]]:
        """Apply the newest stored version of each attribute table between two events.

        The switch is logged with the sequence number of the last event scored before it, so
        export applies it at the same point. Returns the (table, version) pairs switched to.
        """
        engine = self.engine
        if not engine.config.features.attributes:
            return []
        switched = []
        with reading(engine.config.db, db) as store:
            for spec in engine.config.features.attributes:
                latest = attributes.latest_version(store, spec.name)
                if latest is None or latest["version"] == engine.space.attributes[spec.name].version:
                    continue
                engine.space.set_attributes(attributes.read_version(store, spec, latest["version"]))
                engine.rows["attribute_switches"].append({"seq": engine.counts["predictions"], "name": spec.name,
                                                          "version": latest["version"]})
                switched.append((spec.name, latest["version"]))
        return switched

    def attach_attributes(self, db: Any, versions: dict[str, int]) -> None:
        """After a restore: load the `versions` the checkpoint was scoring with, then any newer ones."""
        for spec in self.engine.config.features.attributes:
            version = versions.get(spec.name, 0)
            if version:
                self.engine.space.set_attributes(attributes.read_version(db, spec, version))
        self.refresh_attributes(db)


def model_row(published: Published) -> dict:
    """The registry row of a version: metadata and the model (`snapshot.dump_object`)."""
    return {"version": published.version, "spec": published.spec, "parent": published.parent,
            "n_learned": published.n_learned, "event_ts": published.event_ts, "wall_ts": published.wall_ts,
            "metrics": orjson.dumps(published.metrics).decode(),
            "model": dump_object(published.model), "candidate": published.candidate}
