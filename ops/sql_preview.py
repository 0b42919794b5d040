"""The SQL a planned change would run, where it is known without the server.

Rendered by the kinds' own functions (components/database/index.py, policy.py, table.py), so the
preview shows exactly their statements. Whatever depends on the live catalog (an ALTER POLICY or a
DROP and CREATE, the ALTER TABLE steps of a changed constraint) is chosen at apply time: None here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from psycopg import sql

from components.database.kinds import index, policy, table
from components.kind import Spec
from ops.events import Change

SpecT = TypeVar("SpecT", bound=Spec)
CREATE = frozenset({"create", "replace"})
DELETE = frozenset({"delete", "replace"})


def parse(spec_type: type[SpecT], inputs: dict[str, Any]) -> SpecT:
    """A kind's spec from an event's inputs (outputs such as `valid` or `adopted` left out)."""
    names = {field.alias or name for name, field in spec_type.model_fields.items()}
    return spec_type.model_validate({key: value for key, value in inputs.items() if key in names})


def text(statements: Sequence[sql.Composable]) -> list[str]:
    return [statement.as_string(None) for statement in statements]


def index_sql(change: Change) -> list[str] | None:
    """CONCURRENTLY as on a table that holds rows (an empty one gets a plain CREATE INDEX; a partitioned
    one ON ONLY the parent, then each partition's, attached)."""
    statements: list[sql.Composable] = []
    if change.op in DELETE:
        old = parse(index.IndexSpec, change.old_inputs)
        statements.append(
            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(old.schema_name, old.name))
        )
    if change.op in CREATE:
        new = parse(index.IndexSpec, change.new_inputs)
        relation = sql.Identifier(new.schema_name, new.table)
        statements.append(index.create_statement(new, relation, sql.Identifier(new.name), concurrently=True))
    return text(statements) if statements else None


def policy_sql(change: Change) -> list[str] | None:
    statements: list[sql.Composable] = []
    if change.op in DELETE:
        statements.append(policy.drop_statement(parse(policy.PolicySpec, change.old_inputs)))
    if change.op in CREATE:
        new = parse(policy.PolicySpec, change.new_inputs)
        statements.append(policy.create_statement(new, sql.Identifier(new.schema_name, new.table)))
    return text(statements) if statements else None


def table_sql(change: Change) -> list[str] | None:
    """A new table as made when nothing of that name exists yet (an existing one is adopted instead)."""
    statements: list[sql.Composable] = []
    if change.op in DELETE:
        old = parse(table.TableSpec, change.old_inputs)
        statements.append(sql.SQL("DROP TABLE {} CASCADE").format(sql.Identifier(old.schema_name, old.name)))
    if change.op in CREATE:
        new = parse(table.TableSpec, change.new_inputs)
        relation = sql.Identifier(new.schema_name, new.name)
        statements += [table.create_statement(new, relation), *table.rls_statements(relation)]
    if change.op == "update" and set(change.properties) == {"columns"}:
        return column_sql(change)
    return text(statements) if statements else None


def column_sql(change: Change) -> list[str] | None:
    """Columns added or dropped against the recorded ones; any other column change is planned live."""
    spec = parse(table.TableSpec, change.new_inputs)
    before = {column["name"]: column for column in change.old_inputs.get("columns", [])}
    wanted = {column.name: column for column in spec.columns}
    if any(before[name] != column.model_dump(by_alias=True) for name, column in wanted.items() if name in before):
        return None
    alter = sql.SQL("ALTER TABLE {} ").format(sql.Identifier(spec.schema_name, spec.name))
    statements = [
        alter + sql.SQL("ADD COLUMN ") + table.column_definition(c) for n, c in wanted.items() if n not in before
    ]
    statements += [
        alter + sql.SQL("DROP COLUMN {}").format(sql.Identifier(name)) for name in before if name not in wanted
    ]
    return text(statements)


RENDERERS = {index.TOKEN: index_sql, policy.TOKEN: policy_sql, table.TOKEN: table_sql}


def planned_sql(change: Change) -> list[str] | None:
    """The statements of a change, or None when they are computed at apply time."""
    renderer = RENDERERS.get(change.type)
    if renderer is None:
        return None
    try:
        return renderer(change)
    except (ValueError, KeyError, TypeError):
        return None  # inputs still unknown in the preview (computed from another resource's output)
