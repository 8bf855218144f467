"""Who may talk to the appliance over TCP: what a token must be, where it comes from, and how
slowly a stranger may guess it. The transport (`appliance.serving.server`) applies these.

>>> budget = FailedAuthBudget(per_second=10.0)
>>> [round(budget.delay(100.0), 2) for _ in range(3)]  # three failures at once: one slot each
[0.0, 0.1, 0.2]
>>> budget.delay(200.0)  # the budget refilled meanwhile
0.0
"""

from __future__ import annotations

import os
import stat

from appliance.errors import ConfigError

__all__ = ["AUTH_TIMEOUT", "FAILED_AUTHS_PER_SECOND", "MAX_FAILED_AUTHS", "MIN_TOKEN_LENGTH",
           "UNAUTHENTICATED_LINE", "FailedAuthBudget", "check_token", "read_token_file"]

MIN_TOKEN_LENGTH = 16  # characters; a shorter token (the empty one included) is refused at start
UNAUTHENTICATED_LINE = 4096  # bytes a line may have before the connection has authenticated
AUTH_TIMEOUT = 5.0  # seconds a TCP connection has to authenticate
MAX_FAILED_AUTHS = 3  # failed authentications after which a connection is closed
FAILED_AUTHS_PER_SECOND = 10.0  # every failed attempt's reply waits for a slot of this global budget


def check_token(token: str) -> None:
    """Refuse a token too short to be one (an unset `$TOKEN` passed as `--token "$TOKEN"` is empty)."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"the token is {'empty' if not token else f'{len(token)} characters'}: a token needs "
                          f"at least {MIN_TOKEN_LENGTH} characters (e.g. `openssl rand -hex 16`); "
                          "pass it with --token-file or APPLIANCE_TOKEN")


class FailedAuthBudget:
    """One budget of failed authentications per second shared by every connection: each failure
    reserves the next free slot and its reply waits until then, so guessing from many connections
    is no faster than from one."""

    def __init__(self, per_second: float = FAILED_AUTHS_PER_SECOND) -> None:
        self.interval = 1.0 / per_second
        self.total = 0
        self._next_slot = 0.0

    def delay(self, now: float) -> float:
        """Reserve the next slot for a failure at `now` (the loop's clock); return seconds to wait."""
        self.total += 1
        slot = max(now, self._next_slot)
        self._next_slot = slot + self.interval
        return slot - now


def read_token_file(path: str) -> str:
    """Read a token from a file only its owner can read (a trailing newline is dropped).

    Raises `ConfigError` when the file is missing, readable by group or others, or empty.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f'cannot read token file "{path}": {exc.strerror}') from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if mode & 0o077:
            raise ConfigError(f'token file "{path}" is readable by others (mode {stat.S_IMODE(mode):04o}); '
                              f'run `chmod 600 "{path}"`')
        token = handle.read(4096).decode("utf-8", "replace").rstrip("\r\n")
    if not token:
        raise ConfigError(f'token file "{path}" is empty')
    return token
