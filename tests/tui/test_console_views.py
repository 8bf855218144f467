"""One Pilot test per console view (`tui/views/`): each view, opened against a real socket server
answering with recorded replies (`tests/data/console_replies.json`) that the test then changes,
must show what the replies say, field by field, and follow a change of them. The expected cells
are read from the replies here, not computed with the console's own formatting code."""

from __future__ import annotations

import asyncio
import copy

import pytest

from appliance.serving.protocol import Protocol
from appliance.serving.server import SocketServer
from tests.tui.conftest import REPLIES, text_of, until
from tui.console import Console
from tui.views import Table


class Canned:
    """Recorded replies on a real socket; a test swaps one (whole, so a reader never sees half)."""

    def __init__(self, path: str) -> None:
        self.replies = copy.deepcopy(REPLIES)
        self.requests: list[dict] = []
        handlers = {op: (lambda request, op=op: self.answer(op, request)) for op in REPLIES}
        self.server = SocketServer(Protocol(handlers), unix_path=path)

    def answer(self, op: str, request: dict) -> dict:
        self.requests.append(request)
        if op == "entity" and request.get("entity") != self.replies["entity"]["entity"]:
            return {"key": request.get("key"), "entity": request.get("entity"), "known": False, "values": {},
                    "recent": []}
        return copy.deepcopy(self.replies[op])


@pytest.fixture
def canned(short_dir):
    canned = Canned(str(short_dir / "views.sock"))
    canned.server.start()
    yield canned
    canned.server.stop()


def cells(app, selector: str) -> list[list[str]]:
    table = app.query_one(selector, Table)
    return [[str(cell) for cell in table.get_row_at(row)] for row in range(table.row_count)]


def column(app, selector: str, name: str) -> list[str]:
    index = app.query_one(selector, Table).header.index(name)
    return [row[index] for row in cells(app, selector)]


def run(canned, scenario, size=(120, 40), readonly=False):
    async def main():
        app = Console(canned.server.unix_path, rate=20, readonly=readonly)
        async with app.run_test(size=size) as pilot:
            await scenario(app, pilot)
    asyncio.run(main())


def test_overview_shows_the_counts_rates_and_latency_of_the_stats_reply(canned):
    stats = copy.deepcopy(REPLIES["stats"])
    stats["counts"].update(events=123457, predictions=98765)
    stats["rates"] = {"events_per_second": 4321, "predictions_per_second": 1234}
    stats["predict_latency"] = {"p50_us": 87, "p99_us": 6543}
    canned.replies["stats"] = stats

    async def scenario(app, pilot):
        await until(pilot, lambda: "123,457" in text_of(app, "#figures"), "the overview shows the event count")
        figures = text_of(app, "#figures")
        for shown in ("98,765", "4,321", "1,234", "87 µs", "6,543 µs"):
            assert shown in figures, figures
        assert "events/s" in text_of(app, "#sparks") and 4321.0 in app.snapshot.history.events_rate
        later = copy.deepcopy(stats)
        later["counts"]["events"] = 200001
        canned.replies["stats"] = later
        await until(pilot, lambda: "200,001" in text_of(app, "#figures"), "the overview follows the new count")
        assert "123,457" not in text_of(app, "#figures")

    run(canned, scenario)


def test_models_view_lists_the_leaderboard_of_the_models_reply_and_follows_a_change(canned):
    board = REPLIES["models"]["leaderboard"]

    async def scenario(app, pilot):
        await pilot.press("2")
        await until(pilot, lambda: app.query_one("#leaderboard", Table).row_count == len(board), "the leaderboard")
        assert column(app, "#leaderboard", "candidate") == [row["name"] for row in board]
        assert column(app, "#leaderboard", "role") == [row["role"] for row in board]
        assert column(app, "#leaderboard", "labels") == [f"{row['labels_scored']:,}" for row in board]
        assert column(app, "#leaderboard", "overall") == [f"{row['metrics']['roc_auc']:.4f}" for row in board]
        title = text_of(app, "#curve-title")
        assert REPLIES["curve"]["metric"] in title and f"champion {REPLIES['curve']['champion']}" in title
        assert any("\u2800" < ch <= "\u28ff" for ch in text_of(app, "#curve"))

        # the roles swap and a count grows: the same rows, rewritten in place; the cursor stays
        table = app.query_one("#leaderboard", Table)
        table.move_cursor(row=1)
        models = copy.deepcopy(REPLIES["models"])
        models["leaderboard"][0].update(role="challenger", labels_scored=5000)
        models["leaderboard"][1]["role"] = "champion"
        models["champion"] = models["leaderboard"][1]["name"]
        canned.replies["models"] = models
        await until(pilot, lambda: column(app, "#leaderboard", "role") == ["challenger", "champion"], "the new roles")
        assert column(app, "#leaderboard", "labels")[0] == "5,000"
        assert table.cursor_row == 1 and app.views["models"].selected_candidate() == board[1]["name"]

    run(canned, scenario)


def test_entities_view_shows_the_looked_up_entity_and_an_unknown_one(canned):
    entity = REPLIES["entity"]

    async def scenario(app, pilot):
        await pilot.press("3")
        await until(pilot, lambda: app.views["entities"].keys == REPLIES["stats"]["entity_keys"], "the entity keys")
        app.query_one("#entity-key").value = entity["key"]
        app.query_one("#entity-id").value = entity["entity"]
        app.query_one("#entity-id").focus()
        await pilot.press("enter")
        recent = app.query_one("#entity-recent", Table)
        await until(pilot, lambda: recent.row_count == len(entity["recent"]), "the entity's predictions")
        assert any(r.get("op") == "entity" and (r.get("key"), r.get("entity")) == (entity["key"], entity["entity"])
                   for r in canned.requests)
        assert f"{entity['key']} {entity['entity']}" in text_of(app, "#entity-summary")
        assert column(app, "#entity-features", "feature") == list(entity["values"])
        assert column(app, "#entity-recent", "event id") == [row["event_id"] for row in entity["recent"]]
        assert column(app, "#entity-recent", "version") == [f"v{row['version']}" for row in entity["recent"]]
        statuses = column(app, "#entity-recent", "status")
        assert statuses[0] == entity["recent"][0]["label_status"] == "joined"
        assert "pending" in statuses  # a prediction with no label yet

        app.query_one("#entity-id").value = "c-none"
        app.query_one("#entity-id").focus()
        await pilot.press("enter")
        await until(pilot, lambda: "no features kept" in text_of(app, "#entity-summary"), "an unknown card")
        assert recent.row_count == 0 and app.query_one("#entity-features", Table).row_count == 0

    run(canned, scenario)


def test_data_view_shows_the_fields_and_dead_letters_of_the_data_reply(canned):
    data = REPLIES["data"]

    async def scenario(app, pilot):
        await pilot.press("4")
        dead = app.query_one("#dead-letters", Table)
        await until(pilot, lambda: dead.row_count == len(data["dead_letters_recent"]), "the dead letters")
        assert column(app, "#fields", "field") == list(data["fields"])
        city = column(app, "#fields", "field").index("city")
        assert cells(app, "#fields")[city][3] == str(data["categorical"]["city"]["distinct"])
        letter = data["dead_letters_recent"][0]
        assert cells(app, "#dead-letters")[0][1:3] == [letter["source"], str(letter["offset"])]
        reason = column(app, "#dead-letters", "reason")[0]  # shortened to fit 120 columns, never cut silently
        assert reason == letter["reason"] or (reason.endswith("…") and letter["reason"].startswith(reason[:-1]))
        assert len(reason) >= 20
        assert f"dead letters {data['dead_letters']}" in text_of(app, "#data-summary")

        later = copy.deepcopy(data)
        later["dead_letters"] = 2
        later["dead_letters_recent"].append({**letter, "offset": 9999, "reason": "a second reason"})
        canned.replies["data"] = later
        await until(pilot, lambda: dead.row_count == 2, "a second dead letter")
        assert column(app, "#dead-letters", "offset") == [str(letter["offset"]), "9999"]
        assert "dead letters 2" in text_of(app, "#data-summary")

    run(canned, scenario)


def test_alerts_view_shows_the_audit_trail_and_a_new_alert(canned):
    audit = REPLIES["audit"]["audit"]

    async def scenario(app, pilot):
        await pilot.press("5")
        table = app.query_one("#audit-table", Table)
        await until(pilot, lambda: table.row_count == len(audit), "the audit rows")
        assert column(app, "#audit-table", "#") == [str(e["id"]) for e in audit]
        assert column(app, "#audit-table", "action") == [e["action"] for e in audit]
        assert column(app, "#audit-table", "by") == [e["actor"] for e in audit]
        assert column(app, "#audit-table", "version") == ["-" if e["version"] is None else f"v{e['version']}"
                                                          for e in audit]
        assert app.query_one("#alert-table", Table).row_count == 0  # the recording has none

        alerts = {**REPLIES["alerts"], "alerts": [{"id": 7, "event_ts": 1767295285.0, "kind": "drift",
                                                   "subject": "served error", "action": "publish_candidate"}]}
        canned.replies["alerts"] = alerts
        await until(pilot, lambda: app.query_one("#alert-table", Table).row_count == 1, "the new alert")
        assert cells(app, "#alert-table")[0][0] == "7"
        assert cells(app, "#alert-table")[0][2:] == ["drift", "served error", "publish_candidate"]

    run(canned, scenario, size=(80, 24))


@pytest.mark.parametrize("readonly", [False, True])
def test_help_view_lists_every_key_and_says_whether_actions_are_allowed(canned, readonly):
    async def scenario(app, pilot):
        await pilot.press("question_mark")
        await pilot.pause()
        assert app.query_one("TabbedContent").active == "help"
        text = text_of(app, "#help-text")
        for binding in app.BINDINGS:
            assert binding.description in text, binding
        assert ("Read-only: actions are refused." in text) == readonly

    run(canned, scenario, readonly=readonly)


def test_a_view_paints_again_only_when_its_replies_change(canned):
    """The models view polls `models` and `curve` at every poll; replies equal to the last ones
    (all but the envelope's request id) leave the screen alone, a changed one is painted."""
    async def scenario(app, pilot):
        await pilot.press("2")
        view = app.views["models"]
        await until(pilot, lambda: app.query_one("#leaderboard", Table).row_count == 2 and view.paints > 0, "painted")
        polls, paints = app.polls, view.paints
        await until(pilot, lambda: app.polls >= polls + 5, "five more polls")
        assert view.paints == paints  # the same replies: not painted again
        models = copy.deepcopy(REPLIES["models"])
        models["leaderboard"][0]["labels_scored"] = 7777
        canned.replies["models"] = models
        await until(pilot, lambda: column(app, "#leaderboard", "labels")[0] == "7,777", "the change painted")
        polls = app.polls
        await until(pilot, lambda: app.polls >= polls + 3, "three more polls")
        assert view.paints == paints + 1

    run(canned, scenario)
