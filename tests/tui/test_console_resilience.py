"""The console never crashes on what comes back: replies of the wrong shape, non-JSON lines,
replies to someone else's request. Each view is opened against a real socket server that answers
that way; the console stays up and says what is wrong in its connection state."""

from __future__ import annotations

import asyncio
import socket
import threading

from appliance.serving.protocol import Protocol
from appliance.serving.server import SocketServer
from tests.tui.conftest import text_of, until
from tui.console import Console

JUNK = {
    "health": {"pid": [1], "started_at": {"x": 1}},
    "stats": {"counts": "lots", "rates": [1, 2], "stages": "x", "model": 5, "predict_latency": None,
              "entity_keys": ["card", 7, None], "label_delay_seconds": "soon", "server": [], "drift": 3},
    "models": {"leaderboard": [1, None, {"name": None, "metrics": "x", "versus_champion": {"challenger": "a"}}],
               "probation": "x", "served": None},
    "alerts": {"alerts": "none"}, "audit": {"audit": [None, {"id": {}}]},
    "curve": {"points": [{"event_ts": "x"}, 5, {"event_ts": 1.0, "candidates": "y", "served": "z"},
                         {"event_ts": 2.0, "candidates": {"main": None, "tree": 0.5}, "served": float("inf")}]},
    "data": {"fields": [], "categorical": {"city": 3}, "feature_drift": {"amount": "x"},
             "dead_letters_recent": [None, {"watermark": "x"}]},
    "entity": {"recent": "x", "values": [1], "known": True},
}


def test_replies_of_the_wrong_shape_never_take_the_console_down(short_dir):
    handlers = {op: (lambda request, reply=reply: dict(reply)) for op, reply in JUNK.items()}
    server = SocketServer(Protocol(handlers), unix_path=str(short_dir / "junk.sock"))
    server.start()
    try:
        async def scenario():
            app = Console(server.unix_path, rate=20)
            async with app.run_test(size=(80, 24)) as pilot:
                await until(pilot, lambda: app.polls >= 3, "polls")
                for view in ("2", "3", "4", "5", "?", "1"):
                    await pilot.press(view)
                    polls = app.polls
                    await until(pilot, lambda polls=polls: app.polls >= polls + 2, f"view {view} polled")
                app.query_one("#entity-key").value = "card"
                app.query_one("#entity-id").value = "c1"
                app.query_one("#entity-id").focus()
                await pilot.press("enter")
                app.set_focus(None)
                await pilot.press("3")
                polls = app.polls
                await until(pilot, lambda: app.polls >= polls + 2, "the entity view polled")
                await pilot.press("r", "c", "z", "n")
                assert app.is_running
                assert app.link.state in ("connected", "stale")
        asyncio.run(scenario())
    finally:
        server.stop()


def test_garbage_lines_and_mismatched_ids_make_the_link_stale_not_the_console_crash(short_dir):
    path = str(short_dir / "garbage.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    stop = threading.Event()
    answers = [b"\x00\xffnot json at all\n", b'{"id": 999999, "ok": true}\n', b"[1, 2, 3]\n", b'"just a string"\n']

    def serve():
        listener.settimeout(0.1)
        turn = 0
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(0.5)
                try:
                    while not stop.is_set() and conn.recv(65536):
                        conn.sendall(answers[turn % len(answers)])
                        turn += 1
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        async def scenario():
            app = Console(path, rate=20)
            async with app.run_test(size=(80, 24)) as pilot:
                # between two polls: mid-poll the link may have just reopened (a garbage reply drops it)
                await until(pilot, lambda: app.polls >= 8 and not app.polling, "several polls, none in flight")
                assert app.is_running
                assert app.link.state in ("stale", "connecting", "disconnected")
                assert app.stats == {}  # nothing unreadable was taken for data
                assert app.link.state.split()[0] in text_of(app, "#state")
        asyncio.run(scenario())
    finally:
        stop.set()
        thread.join(5)
        listener.close()
