"""thorbisdb:db:Trigger — a trigger on a table: timing, events, level and the function it runs.

Read from pg_trigger: tgtype's bits give timing, events and level; the function is compared by oid with
the declared name (resolved by the server), so `app.set_updated_at` and the catalog's rendering of it
compare equal. A trigger disabled by hand (ALTER TABLE ... DISABLE TRIGGER) is drift, reported as the
output `enabled`. Any change is a DROP and CREATE in one transaction (a trigger holds no data).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import psycopg
from psycopg import sql
from pydantic import Field, field_validator

from components.database.base import DatabaseKind, qualified
from components.database.ddl import Operation, shared
from components.database.session import Statement, connect
from components.kind import Expect, Observed, Replace, Spec, Status

TOKEN = "thorbisdb:db:Trigger"
Event = Literal["INSERT", "UPDATE", "DELETE"]
# pg_trigger.tgtype bits (src/include/catalog/pg_trigger.h)
_ROW, _BEFORE, _INSTEAD = 1 << 0, 1 << 1, 1 << 6
_EVENT_BITS: dict[Event, int] = {"INSERT": 1 << 2, "DELETE": 1 << 3, "UPDATE": 1 << 4}
QUALIFIED_NAME = r"^[a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*$"


class TriggerSpec(Spec):
    schema_name: Replace[str] = Field(description="Schema of the table.")
    table: Replace[str] = Field(description="Table the trigger is on.")
    name: Replace[str] = Field(description="Trigger name.")
    timing: Literal["BEFORE", "AFTER"] = Field(description="BEFORE or AFTER the event.")
    events: list[Event] = Field(min_length=1, description="INSERT, UPDATE and/or DELETE.")
    level: Literal["ROW", "STATEMENT"] = Field(default="ROW", description="FOR EACH ROW (default) or STATEMENT.")
    function: str = Field(
        pattern=QUALIFIED_NAME, description='The trigger function, schema-qualified: "app.set_updated_at".'
    )

    @field_validator("events")
    @classmethod
    def distinct(cls, events: list[Event]) -> list[Event]:
        if len(set(events)) != len(events):
            raise ValueError(f"events are listed more than once: {events}")
        return events


class TriggerStatus(Status):
    adopted: bool | None = Field(default=None, description="The trigger existed before the stack declared it.")
    enabled: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="False: disabled by hand (ALTER TABLE ... DISABLE TRIGGER); `up` remakes it."
    )


# --- read: the live trigger, in the spec's shape -----------------------------------------------------

TRIGGER_QUERY = """
SELECT t.tgtype, t.tgfoid = to_regproc(%s), quote_ident(n.nspname) || '.' || quote_ident(p.proname),
       t.tgenabled = 'O', t.tgqual IS NOT NULL OR t.tgnargs > 0 OR t.tgattr <> ''::int2vector,
       pg_get_triggerdef(t.oid)
FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE t.tgrelid = to_regclass(%s) AND t.tgname = %s AND NOT t.tgisinternal
"""


def function_name(function: str) -> sql.Identifier:
    schema, name = function.split(".")
    return sql.Identifier(schema, name)


def observed(conn: psycopg.Connection, spec: TriggerSpec) -> Observed[TriggerStatus] | None:
    """The live trigger as a spec: the declared values wherever they hold."""
    relation = qualified(spec.schema_name, spec.table).as_string(conn)
    declared_function = function_name(spec.function).as_string(conn)
    row = conn.execute(TRIGGER_QUERY, (declared_function, relation, spec.name)).fetchone()
    if row is None:
        return None
    tgtype, same_function, live_function, enabled, extra_clauses, definition = row
    events: list[Event] = [event for event, bit in _EVENT_BITS.items() if tgtype & bit]
    function = spec.function if same_function else live_function
    if extra_clauses:  # WHEN, UPDATE OF or arguments the spec has no words for: show the whole definition
        function = definition
    inputs = {
        "schemaName": spec.schema_name,
        "table": spec.table,
        "name": spec.name,
        "timing": "INSTEAD OF" if tgtype & _INSTEAD else "BEFORE" if tgtype & _BEFORE else "AFTER",
        "events": spec.events if set(events) == set(spec.events) else events,
        "level": "ROW" if tgtype & _ROW else "STATEMENT",
        "function": function,
    }
    return Observed(inputs, TriggerStatus(enabled=enabled))


# --- render: the DDL ---------------------------------------------------------------------------------


def drop_statement(spec: TriggerSpec) -> Statement:
    return sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
        sql.Identifier(spec.name), qualified(spec.schema_name, spec.table)
    )


def create_statement(spec: TriggerSpec) -> Statement:
    return sql.SQL("CREATE TRIGGER {} {} {} ON {} FOR EACH {} EXECUTE FUNCTION {}()").format(
        sql.Identifier(spec.name),
        sql.SQL(spec.timing),
        sql.SQL(" OR ").join(sql.SQL(event) for event in spec.events),
        qualified(spec.schema_name, spec.table),
        sql.SQL(spec.level),
        function_name(spec.function),
    )


def recreate_operations(spec: TriggerSpec) -> list[Operation]:
    """DROP and CREATE in one transaction: the table is never without its trigger."""
    return shared([drop_statement(spec), create_statement(spec)])


class TriggerKind(DatabaseKind[TriggerSpec, TriggerStatus]):
    token = TOKEN
    spec_type = TriggerSpec
    status_type = TriggerStatus

    def observe(
        self, resource_id: str, spec: TriggerSpec, recorded: TriggerStatus | None = None
    ) -> Observed[TriggerStatus] | None:
        with connect(self.target) as conn:
            return observed(conn, spec)

    def create(self, spec: TriggerSpec) -> tuple[str, TriggerStatus]:
        with connect(self.target) as conn:
            existed = observed(conn, spec) is not None
            self.recreate(conn, spec)
        return f"{spec.schema_name}.{spec.table}.{spec.name}", TriggerStatus(adopted=existed, enabled=True)

    def update(self, resource_id: str, old: dict[str, Any], spec: TriggerSpec) -> TriggerStatus:
        with connect(self.target) as conn:
            self.recreate(conn, spec)
        return TriggerStatus(enabled=True)

    def recreate(self, conn: psycopg.Connection, spec: TriggerSpec) -> None:
        self.apply(conn, recreate_operations(spec), what=f"trigger {spec.name} on {spec.schema_name}.{spec.table}")

    def delete(self, resource_id: str, spec: TriggerSpec, recorded: TriggerStatus | None = None) -> None:
        with connect(self.target) as conn:  # IF EXISTS: a missing table or trigger is only a notice
            what = f"drop trigger {spec.name} on {spec.schema_name}.{spec.table}"
            self.apply(conn, shared([drop_statement(spec)]), what=what)
