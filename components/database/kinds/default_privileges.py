"""thorbisdb:db:DefaultPrivileges — privileges a role gets on the objects another role creates in a schema.

ALTER DEFAULT PRIVILEGES FOR ROLE owner IN SCHEMA s GRANT ... TO grantee, read back from pg_default_acl:
each declared privilege is reported while the schema's default ACL for that owner still grants it.
"""

from __future__ import annotations

from typing import Any, Literal

import psycopg
from psycopg import sql
from pydantic import Field, field_validator, model_validator

from components.database.base import DatabaseKind
from components.database.ddl import Operation, shared
from components.database.kinds.grant import check_privileges, grantee_sql, normalise_privileges, role_oid
from components.database.session import Statement, connect, scalar
from components.kind import NoStatus, Observed, ProviderError, Replace, Spec

TOKEN = "thorbisdb:db:DefaultPrivileges"
ObjectType = Literal["tables", "sequences", "functions"]
#: object type -> (privilege family of components.database.kinds.grant, pg_default_acl.defaclobjtype)
OBJECT_TYPES = {"tables": ("table", "r"), "sequences": ("sequence", "S"), "functions": ("function", "f")}
DEFAULT_ACL_QUERY = """
SELECT a.privilege_type FROM pg_default_acl d CROSS JOIN LATERAL aclexplode(d.defaclacl) a
WHERE d.defaclrole = %s AND d.defaclnamespace = %s AND d.defaclobjtype = %s AND a.grantee = %s
"""


class DefaultPrivilegesSpec(Spec):
    owner: Replace[str] = Field(description="The role that creates the objects (FOR ROLE).")
    schema_name: Replace[str] = Field(description="Schema the objects are created in (IN SCHEMA).")
    grantee: Replace[str] = Field(description="Role that receives the privileges (PUBLIC for everyone).")
    object_type: Replace[ObjectType] = Field(description="tables, sequences or functions.")
    privileges: list[str] = Field(description='Privileges, e.g. ["SELECT", "INSERT"] or ["EXECUTE"].')

    @field_validator("privileges")
    @classmethod
    def _normalise(cls, values: list[str]) -> list[str]:
        return normalise_privileges(values)

    @model_validator(mode="after")
    def _consistent(self) -> DefaultPrivilegesSpec:
        check_privileges(self.privileges, OBJECT_TYPES[self.object_type][0], self.object_type)
        return self


def held(conn: psycopg.Connection, spec: DefaultPrivilegesSpec) -> list[str] | None:
    """Privileges the schema's default ACL gives the grantee; None when the owner, grantee or schema is gone."""
    owner, grantee = role_oid(conn, spec.owner), role_oid(conn, spec.grantee)
    schema = scalar(conn, "SELECT oid FROM pg_namespace WHERE nspname = %s", (spec.schema_name,))
    if owner is None or grantee is None or schema is None:
        return None
    rows = conn.execute(DEFAULT_ACL_QUERY, (owner, schema, OBJECT_TYPES[spec.object_type][1], grantee))
    return [privilege for (privilege,) in rows]


def alter_default(spec: DefaultPrivilegesSpec, grant: bool, privileges: list[str]) -> Statement:
    return sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} {} {} ON {} {} {}").format(
        sql.Identifier(spec.owner),
        sql.Identifier(spec.schema_name),
        sql.SQL("GRANT" if grant else "REVOKE"),
        sql.SQL(", ").join(sql.SQL(privilege) for privilege in privileges),
        sql.SQL(spec.object_type.upper()),
        sql.SQL("TO" if grant else "FROM"),
        grantee_sql(spec.grantee),
    )


def change_operations(spec: DefaultPrivilegesSpec, live: list[str], old: dict[str, Any]) -> list[Operation]:
    """REVOKE what was declared before and is no longer, then GRANT what the default ACL lacks."""
    dropped = [p for p in normalise_privileges(old.get("privileges") or []) if p not in spec.privileges]
    missing = [p for p in spec.privileges if p not in live]
    statements = [alter_default(spec, False, dropped)] if dropped else []
    statements += [alter_default(spec, True, missing)] if missing else []
    return shared(statements)


def describe(spec: DefaultPrivilegesSpec) -> str:
    return f"default privileges on {spec.object_type} of {spec.owner} in {spec.schema_name} for {spec.grantee}"


class DefaultPrivilegesKind(DatabaseKind[DefaultPrivilegesSpec, NoStatus]):
    token = TOKEN
    spec_type = DefaultPrivilegesSpec

    def observe(
        self, resource_id: str, spec: DefaultPrivilegesSpec, recorded: NoStatus | None = None
    ) -> Observed[NoStatus] | None:
        with connect(self.target) as conn:
            live = held(conn, spec)
        if live is None:
            return None
        inputs = {**spec.model_dump(by_alias=True), "privileges": [p for p in spec.privileges if p in live]}
        return Observed(inputs, NoStatus())

    def create(self, spec: DefaultPrivilegesSpec) -> tuple[str, NoStatus]:
        return f"{spec.owner}:{spec.schema_name}:{spec.object_type}:{spec.grantee}", self.update("", {}, spec)

    def update(self, resource_id: str, old: dict[str, Any], spec: DefaultPrivilegesSpec) -> NoStatus:
        with connect(self.target) as conn:
            live = held(conn, spec)
            if live is None:
                raise ProviderError(
                    f"{describe(spec)}: the owner, the grantee or the schema does not exist; declare them first"
                )
            self.apply(conn, change_operations(spec, live, old), what=describe(spec))
        return NoStatus()

    def delete(self, resource_id: str, spec: DefaultPrivilegesSpec, recorded: NoStatus | None = None) -> None:
        with connect(self.target) as conn:
            if held(conn, spec) is None:
                return
            self.apply(conn, shared([alter_default(spec, False, spec.privileges)]), what=describe(spec))
