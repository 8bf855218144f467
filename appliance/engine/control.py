"""The operator's commands: one small type per command, with one name shared by the socket op, the
control record the inbox persists, and the CLI subcommands that send it.

A command is validated by its op (`operator_ops`), appended to the inbox as a control record
(`to_record`: `{"control": <op>, ...fields}`), read back by the dataflow (`from_record`) and applied by
the engine between two events (`engine_commands`). `COMMANDS` is the single table: a test checks that
every command has its op handler, its CLI subcommand and its section in docs/protocol.md.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

from appliance.errors import InvalidEvent

OPERATOR = "operator"  # the actor of a command that names none


@dataclass(frozen=True, slots=True)
class RefreshAttributes:
    """Switch to the newest stored version of each attribute table."""

    op: ClassVar[str] = "refresh_attributes"
    cli: ClassVar[tuple[str, ...]] = ("attributes refresh",)
    actor: str = OPERATOR


@dataclass(frozen=True, slots=True)
class ImportModels:
    """Register the models `appliance models import` staged in the store."""

    op: ClassVar[str] = "import_models"
    cli: ClassVar[tuple[str, ...]] = ("models import",)
    actor: str = OPERATOR


@dataclass(frozen=True, slots=True)
class Promote:
    """Serve a registered version, a challenger's learner (it becomes the champion), or, naming
    neither, the champion's learner now, past the gate."""

    op: ClassVar[str] = "promote"
    cli: ClassVar[tuple[str, ...]] = ("models promote",)
    version: int | None = None
    challenger: str | None = None
    actor: str = OPERATOR


@dataclass(frozen=True, slots=True)
class Rollback:
    """Serve `version`, or the version that served before this one; pauses automatic publication."""

    op: ClassVar[str] = "rollback"
    cli: ClassVar[tuple[str, ...]] = ("models rollback",)
    version: int | None = None
    actor: str = OPERATOR


@dataclass(frozen=True, slots=True)
class Publishing:
    """Pause or resume automatic publication."""

    op: ClassVar[str] = "publishing"
    cli: ClassVar[tuple[str, ...]] = ("models pause", "models resume")
    paused: bool
    actor: str = OPERATOR


@dataclass(frozen=True, slots=True)
class Challenge:
    """Put a registered version up as a challenger, named "v<version>"."""

    op: ClassVar[str] = "challenge"
    cli: ClassVar[tuple[str, ...]] = ("models challenge",)
    version: int
    actor: str = OPERATOR


@dataclass(frozen=True, slots=True)
class Retire:
    """Drop a challenger (never the champion)."""

    op: ClassVar[str] = "retire"
    cli: ClassVar[tuple[str, ...]] = ("models retire",)
    challenger: str
    actor: str = OPERATOR


Command = RefreshAttributes | ImportModels | Promote | Rollback | Publishing | Challenge | Retire

COMMANDS: dict[str, type[Command]] = {kind.op: kind for kind in (  # type: ignore[misc]
    RefreshAttributes, ImportModels, Promote, Rollback, Publishing, Challenge, Retire)}


def to_record(command: Command) -> dict[str, Any]:
    """The control record the inbox persists: `{"control": <op>, ...fields}`."""
    record: dict[str, Any] = {"control": command.op}
    for field in fields(command):
        record[field.name] = getattr(command, field.name)
    return record


def from_record(record: dict[str, Any]) -> Command:
    """The command a control record names; a clear `InvalidEvent` (a dead letter) for anything else."""
    name = record.get("control")
    kind = COMMANDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise InvalidEvent(f"control record: unknown command {name!r} (known: {', '.join(COMMANDS)})")
    known = {field.name: field for field in fields(kind)}
    extra = sorted(set(record) - set(known) - {"control"})
    if extra:
        raise InvalidEvent(f"control record {name}: unknown fields {', '.join(extra)}")
    values = {}
    for field in known.values():
        if field.name not in record:
            if field.default is MISSING:
                raise InvalidEvent(f'control record {name}: "{field.name}" is missing')
            continue
        value = record[field.name]
        if not (value is None and field.default is None) and not _CHECKS[field.name](value):
            raise InvalidEvent(f'control record {name}: "{field.name}" has a bad value {value!r}')
        values[field.name] = value
    return kind(**values)


_CHECKS = {
    "version": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "challenger": lambda v: isinstance(v, str) and bool(v),
    "paused": lambda v: isinstance(v, bool),
    "actor": lambda v: isinstance(v, str) and bool(v),
}
