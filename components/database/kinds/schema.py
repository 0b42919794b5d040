"""thorbisdb:db:Schema — a schema and its owner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
from psycopg import sql
from pydantic import Field

from components.database.base import DatabaseKind
from components.database.session import connect, run_ddl, scalar
from components.kind import ProviderError, Spec
from components.resource import declared_outputs, provider_inputs

TOKEN = "thorbisdb:db:Schema"


class SchemaSpec(Spec):
    name: str = Field(description="Schema name.")
    owner: str = Field(description="Role that owns the schema.")


class SchemaKind(DatabaseKind[SchemaSpec]):
    token = TOKEN
    spec_type = SchemaSpec
    replace_on = frozenset({"name"})

    def observe(self, resource_id: str, spec: SchemaSpec) -> dict[str, Any] | None:
        with connect(self.target) as conn:
            owner = scalar(conn, "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = %s", (spec.name,))
        return None if owner is None else {"owner": owner.strip('"')}

    def create(self, spec: SchemaSpec) -> tuple[str, dict[str, Any]]:
        existed = self.observe(spec.name, spec) is not None
        with connect(self.target) as conn:
            run_ddl(
                conn,
                [
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(spec.name)),
                    sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(
                        sql.Identifier(spec.name), sql.Identifier(spec.owner)
                    ),
                ],
                self.target.lock_timeout,
                what=f"schema {spec.name}",
            )
        return spec.name, {"adopted": existed}

    def update(self, resource_id: str, old: dict[str, Any], spec: SchemaSpec) -> dict[str, Any]:
        with connect(self.target) as conn:
            run_ddl(
                conn,
                [sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(spec.name), sql.Identifier(spec.owner))],
                self.target.lock_timeout,
                what=f"schema {spec.name}",
            )
        return {}

    def delete(self, resource_id: str, spec: SchemaSpec) -> None:
        with connect(self.target) as conn:
            objects = scalar(
                conn,
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE nspname = %s",
                (spec.name,),
            )
            if objects and not self.target.allow_data_loss:
                raise ProviderError(
                    f"refusing to drop schema {spec.name}: it still holds {objects} relations; "
                    "set thorbis:allowDataLoss true to drop them with it"
                )
            run_ddl(
                conn,
                [sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(spec.name))],
                self.target.lock_timeout,
                what=f"drop schema {spec.name}",
            )


@dataclass
class SchemaArgs:
    name: pulumi.Input[str]
    owner: pulumi.Input[str]


class Schema(pulumi.CustomResource):
    def __init__(self, name: str, args: SchemaArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TOKEN, name, {**provider_inputs(args), **declared_outputs("adopted")}, opts)
