"""The appliance's exceptions: one base class, a few precise kinds.

The CLI turns any `ApplianceError` into a one-line message and exit code 1; the socket protocol
turns it into `{"ok": false, "error": {"code": ..., "message": ...}}`.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error the appliance raises on purpose."""

    code = "error"


class ConfigError(ApplianceError):
    """The configuration file or a command-line option is wrong."""

    code = "bad_config"


class ModelSpecError(ConfigError):
    """A model specification string cannot be parsed or names something not allowed."""

    code = "bad_model_spec"


class SourceError(ApplianceError):
    """An input source cannot be opened or read."""

    code = "bad_source"


class InvalidEvent(ApplianceError):
    """An event is malformed; `reason` says why in one line."""

    code = "invalid_event"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConnectFailed(ApplianceError):
    """No appliance answers on the socket (not running, or another path)."""


class RequestError(ApplianceError):
    """A socket request cannot be served; `code` is stable, `message` is for humans."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NotFound(ApplianceError):
    """A named thing (model version, entity, file) does not exist."""

    code = "not_found"


class StoreInUse(ApplianceError):
    """Another appliance holds the store's lock (`up`, `up --fresh` and `replay` need it alone)."""

    code = "store_in_use"


class FlowFailed(ApplianceError):
    """The dataflow failed more often than its restarts allow (`appliance.runtime.supervision`)."""

    code = "flow_failed"
