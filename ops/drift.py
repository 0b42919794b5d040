"""Drift: what `pulumi refresh --preview-only` finds different from what the stack recorded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi.automation as auto

from components.kind import expectations
from components.registry import kind_of
from ops.events import Change, EventLog
from ops.stack import ToolError, last_line

#: Bookkeeping kept beside the observed state (components/provider.py), never drift itself.
BOOKKEEPING = frozenset({"declaredInputs"})
SECRET_MARK = "ciphertext"
WIDTH = 100
GONE = "gone"


@dataclass(frozen=True)
class Difference:
    """One property of one object: what the stack recorded and what is there now."""

    type: str
    name: str
    property: str
    recorded: str
    live: str


def show(value: Any) -> str:
    """A value for a reader: secrets masked, JSON otherwise, cut to one short line."""
    if isinstance(value, dict) and SECRET_MARK in value:
        return "[secret]"
    if value is None:
        return "(none)"
    shown = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return shown if len(shown) <= WIDTH else shown[: WIDTH - 1] + "…"


def list_difference(recorded: list[Any], live: list[Any]) -> tuple[str, str]:
    """Two lists by their differing items only (a table's columns: the one that changed)."""
    only_recorded = [item for item in recorded if item not in live]
    only_live = [item for item in live if item not in recorded]
    return (
        "… " + show(only_recorded) if only_recorded else "(same items)",
        "… " + show(only_live) if only_live else "(same items)",
    )


def differing_properties(change: Change) -> list[str]:
    if change.properties:
        return [key for key in change.properties if key not in BOOKKEEPING]
    live = change.new_outputs or {}
    keys = sorted(set(change.old_outputs) | set(live))
    return [key for key in keys if key not in BOOKKEEPING and change.old_outputs.get(key) != live.get(key)]


def expected(change: Change) -> dict[str, Any]:
    """The healthy values of the kind's status (Expect markers): what the stack wants of those fields."""
    kind = kind_of(change.type)
    return {} if kind is None else expectations(kind.status_type)


def differences(change: Change) -> list[Difference]:
    """What differs about one object found by a refresh. A status field the state never recorded (a
    create that did not report it, a state older than the field) is shown with its expected value."""
    if change.new_outputs is None or change.op == "delete":
        return [Difference(change.type, change.name, "(the object)", "exists", GONE)]
    found = []
    healthy = expected(change)
    for key in differing_properties(change):
        recorded, live = change.old_outputs.get(key, healthy.get(key)), change.new_outputs.get(key)
        if isinstance(recorded, list) and isinstance(live, list) and len(recorded) + len(live) > 6:
            shown = list_difference(recorded, live)
        else:
            shown = (show(recorded), show(live))
        found.append(Difference(change.type, change.name, key, *shown))
    return found


def find_drift(stack: auto.Stack) -> list[Change]:
    """Run `refresh --preview-only` (nothing is written to the state) and keep what differs."""
    log = EventLog()
    try:
        stack.preview_refresh(on_event=log)
    except auto.CommandError as error:
        raise ToolError(f"pulumi refresh --preview-only on {stack.name} failed: {last_line(str(error))}") from error
    return log.listed


def render_text(stack_name: str, drift: list[Change]) -> str:
    """The drift report scripts/drift prints: one line per property, grouped by object."""
    if not drift:
        return f"No drift: every object of stack {stack_name} is as the stack recorded it.\n"
    lines = [f"Drift on stack {stack_name}: {len(drift)} object(s) differ from what the stack recorded.", ""]
    rows = [difference for change in drift for difference in differences(change)]
    headers = ("object", "property", "recorded", "live")
    table = [(f"{row.type} {row.name}", row.property, row.recorded, row.live) for row in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *table, strict=False)]
    for cells in (headers, tuple("-" * width for width in widths), *table):
        lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip())
    lines += [
        "",
        f"To put the code's state back: pulumi up --stack {stack_name} (it reads the live servers first).",
    ]
    return "\n".join(lines) + "\n"
