"""The event loop every serving process runs: uvloop when installed (C transports: a reply's write and
the poll cost a fraction of asyncio's), else asyncio's own."""

from __future__ import annotations

import asyncio


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency wherever it builds (not Windows)
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
