"""Typed boundaries: one name per operator command (op, control record, CLI, docs), and no import
cycle among the engine, its commands and the socket's ops."""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import click
import pytest

import appliance
from appliance.cli import main
from appliance.commands import COMMANDS, Promote, Publishing, Retire, from_record, to_record
from appliance.engine import Engine
from appliance.errors import InvalidEvent
from appliance.items import ControlItem, DeadItem
from appliance.operator_ops import OperatorOps
from appliance.service import Service
from appliance.stats_board import StatsBoard
from dataflows.appliance_flow import INBOX, make_parser

PROTOCOL = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def module_imports() -> dict[str, set[str]]:
    """Every appliance module's module-level imports of other appliance modules (TYPE_CHECKING ones
    included: a cycle for the type checker is a knot for the reader too; imports inside functions not)."""
    modules = {info.name for info in pkgutil.walk_packages(appliance.__path__, "appliance.")}
    modules.add("appliance")
    graph: dict[str, set[str]] = {}
    for name in modules:
        spec = importlib.util.find_spec(name)
        tree = ast.parse(Path(spec.origin).read_text())
        package = name if spec.submodule_search_locations else name.rpartition(".")[0]
        found: set[str] = set()
        nodes = [n for n in tree.body if not isinstance(n, ast.If)]
        nodes += [n for block in tree.body if isinstance(block, ast.If) for n in block.body]
        for node in nodes:
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[:len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {target for target in found if target in modules and target != name}
    return graph


def test_no_import_cycle_among_the_engine_its_commands_and_the_socket_ops():
    graph = module_imports()
    roots = [Engine.__module__, OperatorOps.__module__, Service.__module__]
    reached, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(graph[name])
    assert {Promote.__module__, ControlItem.__module__, StatsBoard.__module__} <= reached
    try:
        list(TopologicalSorter({name: graph[name] for name in reached}).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_cycle_check_finds_a_cycle():
    with pytest.raises(CycleError):
        list(TopologicalSorter({"a": {"b"}, "b": {"a"}}).static_order())


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
