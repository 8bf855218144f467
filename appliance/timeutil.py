"""Event timestamps and durations: parsing only, no clocks.

Event time is a float of seconds since the Unix epoch (UTC). Wall time never enters a feature.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from appliance.errors import ConfigError, InvalidEvent

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str | int | float) -> float:
    """Return seconds for a duration such as ``"10m"``, ``"1h"``, ``"7d"`` or a number of seconds.

    >>> parse_duration("10m"), parse_duration("1.5h"), parse_duration(30)
    (600.0, 5400.0, 30.0)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0 or not math.isfinite(text):
            raise ConfigError(f"duration {text!r} must be a non-negative number of seconds")
        return float(text)
    match = _DURATION.match(str(text))
    if not match:
        raise ConfigError(f'duration "{text}" is not understood; write e.g. "90s", "10m", "1h", "7d"')
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    """Return the shortest exact spelling of a duration.

    >>> format_duration(600), format_duration(86400 * 2), format_duration(90)
    ('10m', '2d', '90s')
    """
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_timestamp(value: object) -> float:
    """Return epoch seconds for an ISO-8601 string or a number of seconds (milliseconds if huge).

    >>> parse_timestamp("2026-01-01T00:00:03.5Z"), parse_timestamp(1767225603.5)
    (1767225603.5, 1767225603.5)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an integer past the largest float
            raise InvalidEvent(f"timestamp {str(value)[:40]} is out of range") from None
        if not math.isfinite(seconds):
            raise InvalidEvent(f"timestamp {value!r} is not finite")
        # Numbers past the year 5138 in seconds are taken as milliseconds.
        return _in_range(seconds / 1000.0 if abs(seconds) > 1e11 else seconds, value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEvent(f"timestamp {value[:40]!r} is not ISO-8601 or epoch seconds") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        try:
            return _in_range(parsed.timestamp(), value)
        except (OverflowError, ValueError):  # an offset that moves it out of years 1-9999
            raise InvalidEvent(f"timestamp {value[:40]!r} is out of range") from None
    raise InvalidEvent(f"timestamp must be a string or a number, got {type(value).__name__}")


# Event times the appliance can print (stats, replies, dead letters): years 1 to 9999, UTC.
MIN_TIMESTAMP = datetime(1, 1, 2, tzinfo=UTC).timestamp()
MAX_TIMESTAMP = datetime(9999, 12, 30, tzinfo=UTC).timestamp()


def _in_range(seconds: float, value: object) -> float:
    if not MIN_TIMESTAMP <= seconds <= MAX_TIMESTAMP:
        raise InvalidEvent(f"timestamp {str(value)[:40]} is out of range (years 1 to 9999)")
    return seconds


def format_timestamp(seconds: float) -> str:
    """Return an ISO-8601 UTC string with milliseconds.

    >>> format_timestamp(1767225603.5)
    '2026-01-01T00:00:03.500Z'
    """
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
