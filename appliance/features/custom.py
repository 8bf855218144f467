"""Custom Python features: `module:function` for what the declared form cannot say.

A custom feature is a pure function of the event's fields and the features computed before it
(passthrough fields, hashed categoricals, aggregates, attributes), called as
``function(event, features)`` and returning a number, or None for "missing". It runs inside
`FeatureSpace.compute`, so predict, learning and export call it on the same inputs. It must not keep
state of its own or read the clock: that would break replay and export. An exception or a value
that is not a number makes the feature missing for that event and is counted in stats, never a
crash.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError


def import_function(target: str, search_dir: str | None = None) -> Callable[[dict, dict], Any]:
    """Import `module:function`, looking in `search_dir` (the config's folder) first.

    >>> import_function("math:hypot")(3, 4)
    5.0
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f'custom feature function "{target}" must look like "module:function"')
    if search_dir and search_dir not in sys.path:
        sys.path.insert(0, search_dir)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import error in user code must name the feature, not crash opaquely
        raise ConfigError(f'custom feature function "{target}": cannot import "{module_name}": {exc}') from None
    function = module
    for part in attribute.split("."):
        function = getattr(function, part, None)
        if function is None:
            raise ConfigError(f'custom feature function "{target}": "{module_name}" has no "{attribute}"')
    if not callable(function):
        raise ConfigError(f'custom feature function "{target}" is not callable')
    return function


class CustomFeature:
    """One compiled custom feature: calls the function and keeps count of its failures."""

    __slots__ = ("name", "target", "function", "errors", "last_error")

    def __init__(self, name: str, target: str, search_dir: str | None) -> None:
        self.name = name
        self.target = target
        self.function = import_function(target, search_dir)
        self.errors = 0
        self.last_error: str | None = None

    def __call__(self, event: dict[str, Any], features: dict[str, float]) -> float | None:
        try:
            value = self.function(event, features)
        except Exception as exc:  # user code: a failure is this event's missing value, counted
            self._fail(f"{type(exc).__name__}: {exc}")
            return None
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self._fail(f"returned {type(value).__name__}, not a number")
            return None
        value = float(value)
        return value if math.isfinite(value) else None

    def _fail(self, message: str) -> None:
        self.errors += 1
        self.last_error = message[:300]

    def summary(self) -> dict[str, Any]:
        return {"function": self.target, "errors": self.errors, "last_error": self.last_error}


def config_dir(path: str | None) -> str | None:
    """Return the folder custom feature modules are imported from: the config file's own."""
    return str(Path(path).resolve().parent) if path else None
