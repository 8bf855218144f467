"""The operator's socket operations: the model registry and its commands (promote, roll back,
pause publication, challenge, retire, import), alerts and audit, attribute refresh, and the
console's `data` and `curve` views.

Commands are validated here and queued through the inbox, so the engine applies them between two
events, in order with the stream (and they survive a crash); views answer from memory: the
engine's stats snapshot and its recent audit rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.engine.control import (
    COMMANDS,
    Challenge,
    Command,
    ImportModels,
    Promote,
    Publishing,
    RefreshAttributes,
    Retire,
    Rollback,
    to_record,
)
from appliance.errors import RequestError
from appliance.ingest.inbox import Inbox
from appliance.serving.board import StatsBoard
from appliance.storage import registry
from appliance.timeutil import format_timestamp

if TYPE_CHECKING:
    from appliance.engine.core import Engine


def limit_of(request: dict, default: int, high: int | None = None) -> int:
    """The request's `limit`: a positive integer, at most `high`; else a `bad_request`."""
    limit = request.get("limit", default)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1 or (high is not None and limit > high):
        raise RequestError("bad_request", '"limit" must be a positive integer' if high is None
                           else f'"limit" must be an integer from 1 to {high}')
    return limit


class OperatorOps:
    """Handlers for the operator's ops over one engine, its inbox and its stats board."""

    def __init__(self, engine: Engine, inbox: Inbox, board: StatsBoard) -> None:
        self.engine = engine
        self.inbox = inbox
        self.board = board

    def handlers(self) -> dict[str, Callable[[dict], dict]]:
        """The views, and one op per command of `commands.COMMANDS`, named as the command is."""
        views = {"models": self.models, "alerts": self.alerts, "audit": self.audit, "data": self.data,
                 "curve": self.curve}
        return {**views, **{name: getattr(self, name) for name in COMMANDS}}

    def _queue(self, command: Command) -> None:
        """Append the command's control record to the inbox: the engine applies it between two events."""
        self.inbox.append([to_record(command)])

    def import_models(self, request: dict) -> dict:
        """Have the engine register the models `appliance models import` staged in the store.

        Only a signal: the model bytes never travel over the socket.
        """
        self._queue(ImportModels(actor=self._actor(request)))
        return {"queued": True}

    # -- the model registry ----------------------------------------------------------------
    def models(self, request: dict) -> dict:
        """The served version, the learner, and the newest registered versions (metadata only)."""
        model = self.engine.model
        limit = limit_of(request, 20)
        versions = [model.catalog[v] for v in sorted(model.catalog)[-limit:]]
        snapshot = self.board.snapshot.get("model", {})  # metrics: the engine's snapshot
        return {"served": model.served.version, "previous": model.previous(), "champion": model.champion,
                "publishing": "paused" if model.paused else "automatic", "following": model.following,
                "learner": {"spec": model.spec, "n_learned": model.n_learned, "metrics": snapshot.get("learner", {})},
                "leaderboard": snapshot.get("leaderboard", []), "probation": snapshot.get("probation"),
                "versions": versions, "total_versions": len(model.catalog)}

    def promote(self, request: dict) -> dict:
        """Serve a registered version (`version`), a challenger (`challenger`: its name), or the
        champion's learner now, past the gate (neither)."""
        version, challenger = request.get("version"), request.get("challenger")
        if version is not None and challenger is not None:
            raise RequestError("bad_request", 'promote takes "version" or "challenger", not both')
        if version is not None:
            self._check_version(version)
            self._check_kept(version, "promote")
        if challenger is not None:
            self._check_challenger(challenger)
        self._queue(Promote(version=version, challenger=challenger, actor=self._actor(request)))
        target = version if version is not None else challenger if challenger is not None else "learner"
        return {"queued": True, "action": "promote", "version": target}

    def challenge(self, request: dict) -> dict:
        """Put registered version `version` up as a challenger (scored in shadow, never serving)."""
        version = request.get("version")
        self._check_version(version)
        self._check_kept(version, "challenge")
        if f"v{version}" in self.engine.model.candidates:
            raise RequestError("conflict", f"v{version} is already a candidate")
        self._queue(Challenge(version=version, actor=self._actor(request)))
        return {"queued": True, "action": "challenge", "challenger": f"v{version}"}

    def retire(self, request: dict) -> dict:
        """Drop a challenger by name."""
        name = request.get("challenger")
        self._check_challenger(name)
        self._queue(Retire(challenger=name, actor=self._actor(request)))
        return {"queued": True, "action": "retire", "challenger": name}

    def alerts(self, request: dict) -> dict:
        """The newest drift alerts (the full history is the store's `alerts` table)."""
        drift = self.board.snapshot.get("drift", {})
        return {"alerts": list(reversed(drift.get("recent", []))), "total": drift.get("alerts", 0),
                "suppressed_by_cooldown": drift.get("suppressed_by_cooldown", 0)}

    def audit(self, request: dict) -> dict:
        """The newest audit rows (every change to serving, automatic or not), newest first."""
        limit = limit_of(request, 30, 100)
        return {"audit": list(reversed(list(self.engine.recent_audit)))[:limit]}

    def _check_challenger(self, name: Any) -> None:
        model = self.engine.model
        if not isinstance(name, str) or not name:
            raise RequestError("bad_request", '"challenger" must be a challenger\'s name; see the models op')
        if name == model.champion:
            raise RequestError("conflict", f"{name} is the champion, not a challenger")
        if name not in model.candidates:
            raise RequestError("not_found", f"no challenger {name!r}; see the models op's leaderboard")

    def rollback(self, request: dict) -> dict:
        """Serve the version that served before this one (or `version`); pauses automatic publication."""
        model = self.engine.model
        version = request.get("version")
        if version is None:
            version = model.previous()
            if version is None:
                raise RequestError("nothing_to_roll_back", f"v{model.served.version} is the only version that has served")
        self._check_version(version)
        self._check_kept(version, "rollback")
        self._queue(Rollback(version=version, actor=self._actor(request)))
        return {"queued": True, "action": "rollback", "version": version}

    def publishing(self, request: dict) -> dict:
        """Pause or resume automatic publication: `{"op": "publishing", "paused": true}`."""
        paused = request.get("paused")
        if not isinstance(paused, bool):
            raise RequestError("bad_request", 'publishing needs "paused": true or false')
        self._queue(Publishing(paused=paused, actor=self._actor(request)))
        return {"queued": True, "publishing": "paused" if paused else "automatic"}

    def _check_version(self, version: Any) -> None:
        if not isinstance(version, int) or isinstance(version, bool):
            raise RequestError("bad_request", '"version" must be a version number, e.g. 3')
        if version not in self.engine.model.catalog:
            raise RequestError("not_found", f"no model version {version}; see the models op")

    def _check_kept(self, version: int, action: str) -> None:
        """Refuse a version whose model bytes the registry thinned (`registry.thin_models`)."""
        model = self.engine.model
        if version == model.served.version or version in model.recent:
            return
        from appliance.storage.store import reading  # here: a serving child imports this module, not sqlite_utils

        with reading(self.engine.config.db) as store:
            if registry.model_blob(store, version) is None:
                raise RequestError("model_thinned", registry.thinned_error(store, version, action))

    @staticmethod
    def _actor(request: dict) -> str:
        actor = request.get("actor")
        return actor[:64] if isinstance(actor, str) and actor else "operator"

    def refresh_attributes(self, request: dict) -> dict:
        """Have the engine switch to the newest stored attribute tables, in order with the stream."""
        if not self.engine.config.features.attributes:
            raise RequestError("bad_request", "the config declares no [[features.attributes]] tables")
        self._queue(RefreshAttributes(actor=self._actor(request)))
        return {"queued": True}

    def data(self, request: dict) -> dict:
        """Per-field data quality: missing values, unseen categories, drift of the monitored
        features, late events, and the newest dead letters with their reasons."""
        snapshot = self.board.snapshot
        counts = snapshot.get("counts", {})
        drift = snapshot.get("drift", {})
        return {"fields": snapshot.get("fields", {}), "categorical": snapshot.get("categorical", {}),
                "feature_drift": drift.get("feature_drift", {}), "drift_detector": drift.get("detector"),
                "events": counts.get("events", 0), "late_events": counts.get("late_events", 0),
                "duplicates": counts.get("duplicates", 0), "dead_letters": counts.get("dead_letters", 0),
                "dead_letters_recent": snapshot.get("dead_letters_recent", []),
                "allowed_lateness_seconds": self.engine.admission.lateness}

    def curve(self, request: dict) -> dict:
        """The windowed primary metric over event time: the served version and every candidate,
        one point every few hundred labels (the newest 500 points)."""
        model = self.board.snapshot.get("model", {})
        return {"metric": self.engine.model.learner_eval.primary + "_window", "champion": model.get("champion"),
                "points": [{**point, "event_time": format_timestamp(point["event_ts"])}
                           for point in self.board.snapshot.get("curve", [])]}
