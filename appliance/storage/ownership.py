"""A store belongs to one appliance and to its owner: an exclusive lock while an appliance runs on
it, and owner-only files whatever the umask."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from appliance.errors import StoreInUse

__all__ = ["LOCK_SUFFIX", "PRIVATE", "StoreLock", "make_private"]

PRIVATE = 0o600  # every file of a store: owner-only, whatever the umask
LOCK_SUFFIX = "-lock"


def make_private(path: str | Path) -> None:
    """Create `path` if missing, owner-only, and make an existing one owner-only, whatever the umask.

    SQLite creates a database's `-wal` and `-shm` files with the database file's permissions, so
    making the database file private before SQLite opens it makes all three private.
    """
    try:
        fd = os.open(str(path), os.O_RDWR | os.O_CREAT, PRIVATE)
    except PermissionError:  # a store we may only read: leave it as it is
        return
    try:
        if os.fstat(fd).st_mode & 0o777 != PRIVATE:
            os.fchmod(fd, PRIVATE)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        try:
            os.chmod(f"{path}{suffix}", PRIVATE)
        except (FileNotFoundError, PermissionError):
            pass


class StoreLock:
    """An exclusive lock on a store, held while an appliance runs on it (`flock` on `<db>-lock`).

    Taken before anything of the store is unlinked or opened for writing; the kernel drops it when
    the process dies, so a crash never leaves a stale lock. The file holds the holder's pid, for
    the message a second appliance gets.
    """

    def __init__(self, db_path: str | Path) -> None:
        self.path = f"{db_path}{LOCK_SUFFIX}"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, PRIVATE)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise StoreInUse(f'the store "{db_path}" is in use by another appliance (pid {holder}); '
                             "stop it first, or use another --db") from None
        os.fchmod(self._fd, PRIVATE)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Give the lock back (closing the file releases it); idempotent."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
