"""Typed boundaries: one name per operator command (op, control record, CLI, docs). (No import cycle
anywhere is import-linter's job: tests/test_house.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from appliance.cli.main import main
from appliance.engine.control import COMMANDS, Promote, Publishing, Retire, from_record, to_record
from appliance.engine.items import ControlItem, DeadItem
from appliance.errors import InvalidEvent
from appliance.serving.operator_ops import OperatorOps
from dataflows.appliance_flow import INBOX, make_parser

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def click_command(path: str) -> click.Command:
    command: click.Command = main
    for word in path.split():
        assert isinstance(command, click.Group), f"{path}: {command.name} has no subcommands"
        command = command.commands[word]
    return command


def names_used(fn, depth: int = 2) -> set[str]:
    """The global names a function (and the module's functions it calls, `depth` deep) uses."""
    fn = getattr(fn, "__wrapped__", fn)
    names = set(fn.__code__.co_names)
    for name in list(names):
        called = fn.__globals__.get(name)
        if depth and callable(called) and getattr(called, "__code__", None) is not None:
            names |= names_used(called, depth - 1)
    return names


def documented_ops() -> set[str]:
    """Every op named in a `###` heading of docs/protocol.md."""
    headings = [line for line in PROTOCOL.read_text().splitlines() if line.startswith("### ")]
    return {name for line in headings for name in re.findall(r"`([a-z_]+)`", line)}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_its_op_its_cli_subcommands_and_its_doc_section(name):
    kind = COMMANDS[name]
    ops = OperatorOps.__new__(OperatorOps).handlers()
    assert ops[name].__name__ == name  # the op is the command's name
    assert name in documented_ops(), f"docs/protocol.md has no section for {name}"
    assert kind.cli, f"{name} has no CLI subcommand"
    for path in kind.cli:
        command = click_command(path)
        assert command.help, f"`appliance {path}` has no help"
        assert kind.__name__ in names_used(command.callback), f"`appliance {path}` does not send {name}"
        assert f"appliance {path}" in PROTOCOL.read_text(), f"docs/protocol.md does not name `appliance {path}`"


def test_the_command_check_notices_a_cli_command_that_sends_another_op():
    assert Publishing.__name__ not in names_used(click_command("models promote").callback)
    assert "Promote" in names_used(click_command("models promote").callback)


def test_a_command_round_trips_through_its_control_record():
    for command in (Promote(version=3, actor="ops"), Promote(challenger="fast"), Promote(),
                    Publishing(paused=True), Retire("v9")):
        record = to_record(command)
        assert record["control"] == command.op
        assert from_record(record) == command


@pytest.mark.parametrize(("record", "message"), [
    ({"control": "attributes"}, "unknown command 'attributes'"),  # the spelling before one name per command
    ({"control": "pause"}, "unknown command 'pause'"),
    ({"control": 3}, "unknown command 3"),
    ({"control": "publishing"}, '"paused" is missing'),
    ({"control": "publishing", "paused": "yes"}, '"paused" has a bad value'),
    ({"control": "challenge", "version": True}, '"version" has a bad value'),
    ({"control": "retire", "challenger": ""}, '"challenger" has a bad value'),
    ({"control": "promote", "verison": 3}, "unknown fields verison"),
])
def test_a_bad_control_record_is_refused_with_its_reason(record, message):
    with pytest.raises(InvalidEvent, match=re.escape(message)):
        from_record(record)


def test_the_flow_parses_a_control_record_into_its_command_and_a_bad_one_into_a_dead_letter(small_config):
    parse = make_parser(small_config.event, small_config.model.task)
    good, bad = parse([(INBOX, 1, b'{"control":"publishing","paused":true,"actor":"ops"}'),
                       (INBOX, 2, b'{"control":"pause","actor":"ops"}')])
    assert good == ControlItem(INBOX, 1, Publishing(paused=True, actor="ops"))
    assert isinstance(bad, DeadItem) and bad.offset == 2 and "unknown command 'pause'" in bad.reason
    assert '"control":"pause"' in bad.payload  # the record is kept whole in the dead letter
