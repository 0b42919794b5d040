"""thorbisdb:db:Manifest — every table of the stack and its columns, checked before anything changes.

Pulumi deletes a resource that left the program at the end of an update, after the objects that
depend on it: a removed table's policies, trigger and indexes would be gone before its `protect`
stopped the table itself. The manifest is registered first and every database object waits for it,
so a table or column that would go away is refused at `check`, in preview and up alike, while
nothing has changed yet (a column declared `renamed_from` is renamed, not dropped; a column that changes
type keeps its data). It is a record of intent: it creates nothing in the database.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from components.database.base import DatabaseKind
from components.database.table_shape import column_losses
from components.kind import NoStatus, Observed, Spec

TOKEN = "thorbisdb:db:Manifest"


class ManifestSpec(Spec):
    tables: dict[str, dict[str, str]] = Field(description="Every declared table (schema.name): column -> type.")
    renamed: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Per table, the columns declared `renamed_from`: new name -> old name."
    )


class ManifestKind(DatabaseKind[ManifestSpec, NoStatus]):
    token = TOKEN
    spec_type = ManifestSpec
    delete_before_replace = False

    def data_loss(self, old_inputs: dict[str, Any], spec: ManifestSpec) -> list[str]:
        before = self.parse(old_inputs).tables
        losses = [f"table {name} would be dropped with its rows" for name in before if name not in spec.tables]
        for name, columns in before.items():
            if name in spec.tables:
                losses += column_losses(name, list(columns), list(spec.tables[name]), spec.renamed.get(name, {}))
        return losses

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
