"""The docs keep up with the code (as sqlite-utils' test_commands_are_documented): every socket op a
running appliance dispatches is in docs/protocol.md, every `appliance` command in README.md or docs/,
every key of the config schema in docs/config.md, under its table."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from appliance.cli.main import main
from appliance.config.file import FILE_ONLY_KEYS, ConfigFile, config_from_dict
from appliance.config.schema import document_keys
from appliance.errors import RequestError
from appliance.serving.client import Client
from tests.conftest import SMALL_CONFIG, serving

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def served_ops(short_dir: Path) -> list[str]:
    """Ask a real appliance over its socket which ops it dispatches (an unknown op's reply lists them)."""
    config = config_from_dict({**SMALL_CONFIG, "serve": {"db": str(short_dir / "d.db"),
                                                         "socket": str(short_dir / "d.sock")}})
    with serving(config), Client(config.socket) as client, pytest.raises(RequestError) as caught:
        client.request("no_such_op")
    assert caught.value.code == "unknown_op"
    return caught.value.message.split("known ops: ", 1)[1].split(", ")


def test_every_socket_op_is_documented_in_protocol_md(short_dir):
    ops = served_ops(short_dir)
    assert {"predict", "ingest", "label", "stats", "auth", "watch"} <= set(ops)
    text = (DOCS / "protocol.md").read_text()
    assert [op for op in ops if f"`{op}`" not in text and f'"op":"{op}"' not in text] == []


def commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, command in group.commands.items():
        out.append((*prefix, name))
        if isinstance(command, click.Group):
            out.extend(commands(command, (*prefix, name)))
    return out


def documented_commands(text: str) -> set[tuple[str, ...]]:
    """Commands the docs name as `appliance NAME SUB`, including the `appliance models list|show` form."""
    found = set()
    for first, rest in re.findall(r"appliance ([a-z][\w-]*)(?: ([a-z][\w-]*(?:\|[a-z][\w-]*)*))?", text):
        found.add((first,))
        for second in rest.split("|") if rest else ():
            found.add((first, second))
    return found


def test_every_cli_command_is_documented_in_the_readme_or_docs():
    text = (ROOT / "README.md").read_text() + "".join(page.read_text() for page in sorted(DOCS.glob("*.md")))
    every = commands(main)
    assert ("models", "promote") in every and ("up",) in every
    assert sorted(set(every) - documented_commands(text)) == []


def test_every_cli_command_has_help_text():
    def walk(command: click.Command, path: str) -> list[str]:
        missing = [] if (command.help or command.short_help) else [path]
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                missing += walk(sub, f"{path} {name}")
        return missing

    assert walk(main, "appliance") == []


def table_blocks(text: str) -> dict[str, str]:
    """Split docs/config.md at its headings and `[[table]]` paragraphs; each block under the tables it names."""
    blocks: dict[str, str] = {}
    for block in re.split(r"\n(?=## |`\[\[)", text):
        first = block.split("\n", 1)[0]
        for table in re.findall(r"`\[\[?([\w.]+)\]\]?`", first):
            blocks[table] = blocks.get(table, "") + block
    return blocks


def test_every_config_key_is_documented_in_config_md_under_its_table():
    blocks = table_blocks((DOCS / "config.md").read_text())
    keys = list(document_keys(ConfigFile))
    keys += [f"{table}.{key}" for table, extra in FILE_ONLY_KEYS.items() for key in extra]
    assert "model.publish_every" in keys and "features.aggregate.window" in keys
    missing = []
    for path in keys:
        table, key = path.rsplit(".", 1)
        block = blocks.get(table, "")
        if f"`{key}`" not in block and f"`{key} = " not in block and f"`[{path}]`" not in block:
            missing.append(path)
    assert missing == []
