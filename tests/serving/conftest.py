"""Helpers shared by the serving tests."""

from __future__ import annotations

import threading


def echo_handlers(release: threading.Event | None = None):
    def echo(request):
        return {"echo": request.get("value")}

    def boom(request):
        raise ZeroDivisionError("oops")

    def wait(request):
        assert release is not None and release.wait(10)
        return {"waited": True}

    return {"echo": echo, "boom": boom, "wait": wait}
