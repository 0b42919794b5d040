"""The SQL a planned change would run, where it is known without the server.

Each kind plans its changes as typed operations (components/database/ddl.py); its `planned_create`,
`planned_update` and `planned_delete` give those a change takes without reading the live catalog, and they
are rendered here exactly as the apply executes them. What depends on the live catalog (an ALTER POLICY or
a DROP and CREATE, the ALTER TABLE steps of a changed constraint) is decided at apply time: None here.
"""

from __future__ import annotations

from typing import Any, TypeVar

from components.database.base import DatabaseKind
from components.database.ddl import Operation, render
from components.kind import Spec
from components.registry import kind_of
from ops.events import Change

SpecT = TypeVar("SpecT", bound=Spec)
CREATE = frozenset({"create", "replace"})
DELETE = frozenset({"delete", "replace"})


def parse(spec_type: type[SpecT], inputs: dict[str, Any]) -> SpecT:
    """A kind's spec from an event's inputs (outputs such as `valid` or `adopted` left out)."""
    names = {field.alias or name for name, field in spec_type.model_fields.items()}
    return spec_type.model_validate({key: value for key, value in inputs.items() if key in names})


def planned_operations(kind: DatabaseKind[Any, Any], change: Change) -> list[Operation] | None:
    """A replacement is the old object's drop, then the new one's creation."""
    if change.op == "update":
        return kind.planned_update(parse(kind.spec_type, change.old_inputs), parse(kind.spec_type, change.new_inputs))
    steps: list[list[Operation] | None] = []
    if change.op in DELETE:
        steps.append(kind.planned_delete(parse(kind.spec_type, change.old_inputs)))
    if change.op in CREATE:
        steps.append(kind.planned_create(parse(kind.spec_type, change.new_inputs)))
    if not steps or any(step is None for step in steps):
        return None
    return [operation for step in steps for operation in step or []]


def planned_sql(change: Change) -> list[str] | None:
    """The statements of a change, or None when they are computed at apply time."""
    kind_type = kind_of(change.type)
    if kind_type is None or not issubclass(kind_type, DatabaseKind):
        return None
    try:
        operations = planned_operations(kind_type(), change)
    except (ValueError, KeyError, TypeError):
        return None  # inputs still unknown in the preview (computed from another resource's output)
    return None if operations is None else render(operations)
