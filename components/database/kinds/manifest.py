"""thorbisdb:db:Manifest — every table of the stack and its columns, checked before anything changes.

Pulumi deletes a resource that left the program at the end of an update, after the objects that
depend on it: a removed table's policies, trigger and indexes would be gone before its `protect`
stopped the table itself. The manifest is registered first and every database object waits for it,
so a table or column that would go away is refused at `check`, in preview and up alike, while
nothing has changed yet (a column declared `renamed_from` is renamed, not dropped; a column that changes
type keeps its data). It is a record of intent: it creates nothing in the database, and it is never a change
of its own (the engine keeps the declaration that passed its check as the record of the next one). An `up`
that failed after its check leaves the record ahead of the tables, so only what the live database holds of
the record counts: a column or table declared then but never made loses nothing when it is declared away.
"""

from __future__ import annotations

from typing import Any, ClassVar

import psycopg
from pydantic import Field

from components.database.base import DatabaseKind
from components.database.session import connect
from components.database.table_shape import column_losses
from components.kind import NoStatus, Observed, ProviderError, Spec

#: The columns of the named tables of a schema; a table without columns has one row with a NULL column.
LIVE_COLUMNS = """
SELECT c.relname, a.attname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = %s AND c.relname = ANY(%s) AND c.relkind IN ('r', 'p')
"""

TOKEN = "thorbisdb:db:Manifest"


class ManifestSpec(Spec):
    schema_name: str = Field(default="public", description="The schema of the tables.")
    tables: dict[str, dict[str, str]] = Field(description="Every declared table (by name): column -> type.")
    renamed: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Per table, the columns declared `renamed_from`: new name -> old name."
    )


class ManifestKind(DatabaseKind[ManifestSpec, NoStatus]):
    token = TOKEN
    spec_type = ManifestSpec
    delete_before_replace = False
    changes_nothing: ClassVar[bool] = True

    def data_loss(self, old_inputs: dict[str, Any], spec: ManifestSpec) -> list[str]:
        before = self.parse(old_inputs)
        live = self.live_columns(spec.schema_name, list(before.tables))
        losses: list[str] = []
        for name, columns in before.tables.items():
            there = set(columns) if live is None else live.get(name)
            if there is None:
                continue  # declared, but never made: nothing of it to lose
            if name not in spec.tables:
                losses.append(f"table {name} would be dropped with its rows")
                continue
            held = [column for column in columns if column in there]
            losses += column_losses(name, held, list(spec.tables[name]), spec.renamed.get(name, {}))
        return losses

    def live_columns(self, schema: str, tables: list[str]) -> dict[str, set[str]] | None:
        """The columns each of the tables has now; None when the database cannot be asked (every recorded
        column then counts as there)."""
        if not tables:
            return {}
        try:
            with connect(self.target) as conn:
                rows = conn.execute(LIVE_COLUMNS, (schema, tables)).fetchall()
        except (ProviderError, ValueError, psycopg.Error):  # unreachable, or its connection not known yet
            return None
        live: dict[str, set[str]] = {}
        for table, column in rows:
            live.setdefault(str(table), set()).update([str(column)] if column is not None else [])
        return live

    def observe(
        self, resource_id: str, spec: ManifestSpec, recorded: NoStatus | None = None
    ) -> Observed[NoStatus] | None:
        return Observed({}, NoStatus())  # nothing lives in the database: the declared tables are the whole state

    def create(self, spec: ManifestSpec) -> tuple[str, NoStatus]:
        return "manifest", NoStatus()

    def update(self, resource_id: str, old: dict[str, Any], spec: ManifestSpec) -> NoStatus:
        return NoStatus()

    def delete(self, resource_id: str, spec: ManifestSpec, recorded: NoStatus | None = None) -> None:
        """Tables are protected resources of their own; forgetting the record loses nothing."""
