"""Which planned changes lose data: the provider's refusals, and losses a stack that allows them would take."""

from __future__ import annotations

from collections.abc import Iterable

from components.database.kinds.manifest import ManifestKind
from components.database.kinds.table import TableKind
from ops.events import Change
from ops.sql_preview import parse

DATA_LOSS_SETTING = "thorbis:allowDataLoss"
#: Kinds whose delete or replacement drops data that exists nowhere else.
HOLDS_DATA = {
    "thorbisdb:db:Table": "table {name} would be dropped with its rows",
    "thorbisdb:local:PostgresServer": "the primary {name} and its data directory would be deleted",
    "thorbisdb:local:Redis": "the Redis server {name} and its data would be deleted",
}
DROPS = frozenset({"delete", "replace", "delete-replaced", "create-replacement"})


def refusals(errors: Iterable[str]) -> list[str]:
    """What the provider refused at check because the stack does not allow data loss."""
    found = []
    for message in errors:
        if DATA_LOSS_SETTING not in message:
            continue
        _, _, problem = message.partition("has a problem: ")
        problem, _, _ = (problem or message).partition(": refused because")
        found.append(f"{problem.strip()} (refused: {DATA_LOSS_SETTING} is false)")
    return found


def losses(change: Change) -> list[str]:
    """Data a change would destroy when the stack allows it (thorbis:allowDataLoss true)."""
    if change.op in DROPS and change.type in HOLDS_DATA:
        return [HOLDS_DATA[change.type].format(name=change.name)]
    try:
        if change.type == "thorbisdb:db:Manifest" and change.op == "update":
            manifest = ManifestKind()
            return manifest.data_loss(change.old_inputs, parse(manifest.spec_type, change.new_inputs))
        if change.type == "thorbisdb:db:Table" and change.op == "update":
            kind = TableKind()
            return kind.data_loss(change.old_inputs, parse(kind.spec_type, change.new_inputs))
    except (ValueError, KeyError, TypeError):
        return []  # inputs still unknown in the preview
    return []


def destructive(changes: Iterable[Change], errors: Iterable[str]) -> list[str]:
    """Every data-losing change, each named once."""
    found = refusals(errors) + [loss for change in changes for loss in losses(change)]
    return list(dict.fromkeys(found))
