"""Which planned changes lose data: the provider's refusals, and losses a stack that allows them would take."""

from __future__ import annotations

from collections.abc import Iterable

from components.registry import kind_of
from ops.events import Change
from ops.sql_preview import parse

DATA_LOSS_SETTING = "thorbis:allowDataLoss"
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
    """Data a change would destroy when the stack allows it (thorbis:allowDataLoss true), as its kind says."""
    kind_type = kind_of(change.type)
    if kind_type is None:
        return []
    if change.op in DROPS:
        return [] if kind_type.deleting_loses is None else [kind_type.deleting_loses.format(name=change.name)]
    if change.op != "update":
        return []
    kind = kind_type()
    try:
        return kind.data_loss(change.old_inputs, parse(kind.spec_type, change.new_inputs))
    except (ValueError, KeyError, TypeError):
        return []  # inputs still unknown in the preview


def destructive(changes: Iterable[Change], errors: Iterable[str]) -> list[str]:
    """Every data-losing change, each named once."""
    found = refusals(errors) + [loss for change in changes for loss in losses(change)]
    return list(dict.fromkeys(found))
