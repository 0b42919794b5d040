"""thorbisdb:db:DestroyGuard — the first thing a destroy deletes, and the one that refuses while data would go.

A destroy deletes what depends on others first. The guard is declared last and depends on every other
resource of the stack, so a destroy, however it is run (`pulumi destroy`, `--skip-preview`, the Automation
API), asks it before anything else: while `thorbis:allowDataLoss` is false and a declared table holds rows,
it refuses, naming the key and the commands that destroy the data on purpose, and nothing has been deleted.
(Pulumi's own `protect` would stop only each table, after its policies, grants, indexes and row level
security were gone, and would advise `pulumi state unprotect`.) It creates nothing in the database.
"""

from __future__ import annotations

import psycopg
from pydantic import Field

from components.database.base import DatabaseKind, qualified
from components.database.session import connect, scalar
from components.database.table_shape import holds_rows
from components.kind import NoStatus, Observed, ProviderError, Spec

TOKEN = "thorbisdb:db:DestroyGuard"


class DestroyGuardSpec(Spec):
    stack: str = Field(description="The Pulumi stack, named in the refusal's commands.")
    tables: list[str] = Field(description="Every declared table, as schema.name.")


def data_loss_commands(stack: str) -> list[str]:
    """The commands that destroy a stack and its data on purpose."""
    return [
        f"pulumi config set thorbis:allowDataLoss true --stack {stack}",
        f"pulumi up --stack {stack}          # the provider learns it",
        f"make destroy STACK={stack}         # or pulumi destroy --stack {stack}",
    ]


def holding_rows(conn: psycopg.Connection, tables: list[str]) -> list[str]:
    """Those of the tables (schema.name) that exist and hold at least one row (read with row_security off)."""
    relations = {name: qualified(*name.split(".", 1)) for name in tables}
    return [
        name
        for name, relation in relations.items()
        if scalar(conn, "SELECT to_regclass(%s) IS NOT NULL", (relation.as_string(conn),))
        and holds_rows(conn, *name.split(".", 1))
    ]


class DestroyGuardKind(DatabaseKind[DestroyGuardSpec, NoStatus]):
    token = TOKEN
    spec_type = DestroyGuardSpec
    status_type = NoStatus

    def observe(
        self, resource_id: str, spec: DestroyGuardSpec, recorded: NoStatus | None = None
    ) -> Observed[NoStatus] | None:
        return Observed({}, NoStatus())  # nothing lives in the database

    def create(self, spec: DestroyGuardSpec) -> tuple[str, NoStatus]:
        return "destroy-guard", NoStatus()

    def update(self, resource_id: str, old: dict[str, object], spec: DestroyGuardSpec) -> NoStatus:
        return NoStatus()

    def delete(self, resource_id: str, spec: DestroyGuardSpec, recorded: NoStatus | None = None) -> None:
        if self.target.allow_data_loss or not spec.tables:
            return
        with connect(self.target) as conn:
            holding = holding_rows(conn, spec.tables)
        if holding:
            shown = ", ".join(holding[:5]) + (f" and {len(holding) - 5} more" if len(holding) > 5 else "")
            raise ProviderError(
                "\n".join(
                    [
                        f"refusing to destroy stack {spec.stack}: thorbis:allowDataLoss is false and {len(holding)} of "
                        f"its tables hold rows ({shown}). Nothing was deleted. To destroy the stack and its data on "
                        "purpose:",
                        *(f"  {command}" for command in data_loss_commands(spec.stack)),
                    ]
                )
            )
