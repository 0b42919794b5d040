"""thorbisdb:db:ExactPrivileges — nothing is granted on the stack's objects beyond what it declares.

The Grant resources give the declared privileges; this kind takes away the rest: on each managed object
(tables, views and materialized views, schemas, the database) every privilege its ACL holds that the
declaration does not give, to any role (TRUNCATE, TRIGGER and REFERENCES of Supabase's default `ALL` above
all: TRUNCATE ignores row level security), and the grant options no grant declares. It also keeps the
default privileges of the role the stack connects as (which creates the tables, and whose pg_cron job makes
the partitions) granting nothing in the stack's schemas, so a new table or partition starts with no
privilege but its owner's until its declared grants.

Where the line is: the owner's own privileges and the admin's are the stack's tools, never taken; an object
the stack adopted but does not own (a schema that kept its owner, the database) has only the privileges of
the stack's own roles managed, so Supabase's grants to postgres, dashboard_user or PUBLIC there stay. What
is undeclared is drift (`undeclared`, each with what it is), revoked by `up`. The admin's default
privileges found at creation are put back by delete, as destroy must leave the platform as it found it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import psycopg
from psycopg import sql
from pydantic import Field

from components.database.base import DatabaseKind, qualified
from components.database.ddl import Operation, shared
from components.database.kinds.grant import GrantSpec, grantee_sql, normalise_privileges
from components.database.session import Statement, connect
from components.kind import Access, Expect, Observed, ProviderError, Spec, Status

TOKEN = "thorbisdb:db:ExactPrivileges"
ObjectType = Literal["table", "schema", "database"]
#: What each object type's ACL is read from: (catalog query by schema and name, GRANT's keyword).
ACL_QUERIES: dict[str, tuple[str, str]] = {
    "table": (
        "SELECT c.relowner, CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' ELSE 'table' END, "
        "a.grantee, a.privilege_type, a.is_grantable FROM pg_class c "
        "LEFT JOIN LATERAL aclexplode(c.relacl) a ON true WHERE c.oid = to_regclass(%(relation)s)",
        "TABLE",
    ),
    "schema": (
        "SELECT n.nspowner, 'schema', a.grantee, a.privilege_type, a.is_grantable FROM pg_namespace n "
        "LEFT JOIN LATERAL aclexplode(n.nspacl) a ON true WHERE n.nspname = %(name)s",
        "SCHEMA",
    ),
    "database": (
        "SELECT d.datdba, 'database', a.grantee, a.privilege_type, a.is_grantable FROM pg_database d "
        "LEFT JOIN LATERAL aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a ON true "
        "WHERE d.datname = current_database()",
        "DATABASE",
    ),
}
#: The default privileges of the role the stack connects as, globally and in the given schemas.
DEFAULTS_QUERY = """
SELECT coalesce(n.nspname, ''), d.defaclobjtype, a.grantee, a.privilege_type, a.is_grantable,
       (a.grantee, a.privilege_type) IN (SELECT b.grantee, b.privilege_type
                                          FROM aclexplode(acldefault(d.defaclobjtype, d.defaclrole)) b)
FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
CROSS JOIN LATERAL aclexplode(d.defaclacl) a
WHERE d.defaclrole = (SELECT oid FROM pg_roles WHERE rolname = current_user)
  AND (d.defaclnamespace = 0 OR n.nspname = ANY(%s)) AND a.grantee <> d.defaclrole
ORDER BY 1, 2, 3, 4
"""
#: pg_default_acl.defaclobjtype -> the words ALTER DEFAULT PRIVILEGES uses for it.
DEFAULT_OBJECTS = {"r": "TABLES", "S": "SEQUENCES", "f": "FUNCTIONS", "T": "TYPES", "n": "SCHEMAS"}


class ObjectPrivileges(Spec):
    object_type: ObjectType = Field(description="table (views and materialized views too), schema or database.")
    schema_name: str | None = Field(default=None, description="Schema of a table; none for a schema or the database.")
    name: str = Field(default="", description="Its name; empty for the database the stack connects to.")
    allowed: dict[str, list[str]] = Field(
        default_factory=dict, description="Grantee (PUBLIC for everyone) -> the privileges the declaration gives."
    )
    owner: str | None = Field(
        default=None,
        description="None: every role's privileges on it are the stack's. A role: only while the object's owner "
        "is that role (a schema the stack made); otherwise (adopted, or the database) only the stack's roles'.",
    )

    def label(self, kind: str) -> str:
        return f"{kind} {self.schema_name}.{self.name}" if self.schema_name else f"{kind} {self.name or '(this one)'}"


class DefaultGrant(Spec):
    """One entry of the admin's default privileges, as found (to be put back)."""

    schema_name: str = Field(description="Its schema; empty for the admin's defaults in every schema.")
    object_type: str = Field(
        description="pg_default_acl's code: r tables, S sequences, f functions, T types, n schemas."
    )
    grantee: str
    privilege: str
    grantable: bool = False


class ExactPrivilegesSpec(Spec):
    roles: list[str] = Field(description="The roles the stack declares.")
    objects: list[ObjectPrivileges] = Field(default_factory=list, description="The managed objects.")
    default_schemas: list[str] = Field(
        default_factory=list,
        description="Schemas in which (and globally) the default privileges of the role the stack connects as grant "
        "nothing: a new table or partition starts with its owner's privileges only.",
    )


class ExactPrivilegesStatus(Status):
    undeclared: Access[Annotated[list[str] | None, Expect([])]] = Field(
        default=None, description="Privileges held beyond the declaration, each as `grantee: PRIVILEGE on object`."
    )
    found_defaults: list[DefaultGrant] | None = Field(
        default=None, description="The admin's default privileges revoked at creation, which delete puts back."
    )


@dataclass(frozen=True)
class Extra:
    """One privilege held beyond the declaration, and the statement that takes it away."""

    what: str
    revoke: Statement


@dataclass(frozen=True)
class Surface:
    admin: str
    extras: list[Extra]
    defaults: list[DefaultGrant]


def role_name(conn: psycopg.Connection, oid: int) -> str:
    if oid == 0:
        return "PUBLIC"
    found = conn.execute("SELECT rolname FROM pg_roles WHERE oid = %s", (oid,)).fetchone()
    return str(found[0]) if found else str(oid)


def object_extras(conn: psycopg.Connection, target: ObjectPrivileges, roles: list[str], admin: str) -> list[Extra]:
    query, keyword = ACL_QUERIES[target.object_type]
    name: sql.Composable = sql.Identifier(target.name or str(conn.info.dbname))
    if target.schema_name:
        name = qualified(target.schema_name, target.name)
    rows = conn.execute(query, {"relation": name.as_string(conn), "name": target.name}).fetchall()
    if not rows:
        return []
    owner = role_name(conn, rows[0][0])
    whole = target.owner is None or target.owner == owner
    extras = []
    for _, kind, grantee_oid, privilege, grantable in rows:
        if grantee_oid is None:
            continue  # no ACL at all
        grantee = role_name(conn, grantee_oid)
        if grantee in (owner, admin) or (not whole and grantee not in roles):
            continue
        allowed = normalise_privileges(target.allowed.get(grantee, []))
        on = sql.SQL("ON {} {} FROM {} CASCADE").format(sql.SQL(keyword), name, grantee_sql(grantee))
        if privilege not in allowed:
            revoke = sql.SQL("REVOKE {} ").format(sql.SQL(privilege)) + on
            extras.append(Extra(f"{grantee}: {privilege} on {target.label(kind)}", revoke))
        elif grantable:
            revoke = sql.SQL("REVOKE GRANT OPTION FOR {} ").format(sql.SQL(privilege)) + on
            extras.append(Extra(f"{grantee}: GRANT OPTION FOR {privilege} on {target.label(kind)}", revoke))
    return extras


def default_grant_statement(admin: str, grant: DefaultGrant, give: bool) -> Statement:
    where = sql.SQL(" IN SCHEMA {}").format(sql.Identifier(grant.schema_name)) if grant.schema_name else sql.SQL("")
    action = sql.SQL("GRANT {} ON {} TO {}{}" if give else "REVOKE {} ON {} FROM {}{}").format(
        sql.SQL(grant.privilege),
        sql.SQL(DEFAULT_OBJECTS[grant.object_type]),
        grantee_sql(grant.grantee),
        sql.SQL(" WITH GRANT OPTION" if give and grant.grantable else (" CASCADE" if not give else "")),
    )
    return sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {}{} ").format(sql.Identifier(admin), where) + action


def read_defaults(conn: psycopg.Connection, schemas: list[str]) -> list[DefaultGrant]:
    """The admin's default privileges beyond the built-in ones (PUBLIC's EXECUTE on functions, USAGE on types)."""
    return [
        DefaultGrant(
            schema_name=schema, object_type=objtype, grantee=role_name(conn, grantee), privilege=privilege,
            grantable=grantable,
        )
        for schema, objtype, grantee, privilege, grantable, built_in in conn.execute(DEFAULTS_QUERY, (schemas,))
        if not (schema == "" and built_in)
    ]  # fmt: skip


def default_extra(admin: str, grant: DefaultGrant) -> Extra:
    where = f"schema {grant.schema_name}" if grant.schema_name else "every schema"
    what = (
        f"{grant.grantee}: {grant.privilege} on new {DEFAULT_OBJECTS[grant.object_type].lower()} of {admin} in {where}"
    )
    return Extra(f"{what} (default privileges)", default_grant_statement(admin, grant, give=False))


def read_surface(conn: psycopg.Connection, spec: ExactPrivilegesSpec) -> Surface:
    admin = str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
    extras = [extra for target in spec.objects for extra in object_extras(conn, target, spec.roles, admin)]
    defaults = read_defaults(conn, spec.default_schemas) if spec.default_schemas else []
    extras += [default_extra(admin, grant) for grant in defaults]
    return Surface(admin, extras, defaults)


def status(surface: Surface) -> ExactPrivilegesStatus:
    return ExactPrivilegesStatus(undeclared=[extra.what for extra in surface.extras])


def revoke_operations(surface: Surface) -> list[Operation]:
    return shared([extra.revoke for extra in surface.extras])


class ExactPrivilegesKind(DatabaseKind[ExactPrivilegesSpec, ExactPrivilegesStatus]):
    token = TOKEN
    spec_type = ExactPrivilegesSpec
    status_type = ExactPrivilegesStatus

    def observe(
        self, resource_id: str, spec: ExactPrivilegesSpec, recorded: ExactPrivilegesStatus | None = None
    ) -> Observed[ExactPrivilegesStatus] | None:
        with connect(self.target) as conn:
            return Observed(spec.model_dump(by_alias=True), status(read_surface(conn, spec)))

    def preview_status(self, spec: ExactPrivilegesSpec) -> ExactPrivilegesStatus:
        return ExactPrivilegesStatus(undeclared=[])

    def create(self, spec: ExactPrivilegesSpec) -> tuple[str, ExactPrivilegesStatus]:
        found, now = self.converge(spec)
        return "exact-privileges", now.model_copy(update={"found_defaults": found})

    def update(self, resource_id: str, old: dict[str, Any], spec: ExactPrivilegesSpec) -> ExactPrivilegesStatus:
        return self.converge(spec)[1]

    def converge(self, spec: ExactPrivilegesSpec) -> tuple[list[DefaultGrant], ExactPrivilegesStatus]:
        """Revoke what is undeclared; the admin's default privileges found, and what is held beyond now."""
        with connect(self.target) as conn:
            surface = read_surface(conn, spec)
            self.apply(conn, revoke_operations(surface), what="undeclared privileges")
            left = read_surface(conn, spec)
        if left.extras:  # granted by another grantor than the owner: the owner's REVOKE does not reach them
            raise ProviderError(
                f"undeclared privileges the stack could not revoke as {left.admin}: "
                f"{'; '.join(extra.what for extra in left.extras)}. Revoke them as the role that granted them "
                "(pg_class.relacl names the grantor), then run `pulumi up` again"
            )
        return surface.defaults, status(left)

    def delete(
        self, resource_id: str, spec: ExactPrivilegesSpec, recorded: ExactPrivilegesStatus | None = None
    ) -> None:
        """Put back the admin's default privileges found at creation (of roles that still exist)."""
        found = [] if recorded is None else recorded.found_defaults or []
        if not found:
            return
        with connect(self.target) as conn:
            admin = str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]
            roles = {name for (name,) in conn.execute("SELECT rolname FROM pg_roles")} | {"PUBLIC"}
            statements = [default_grant_statement(admin, grant, give=True) for grant in found if grant.grantee in roles]
            self.apply(conn, shared(statements), what="restore default privileges")


# --- the program side: the managed objects, with what the declared grants give on each --------------------

ObjectKey = tuple[ObjectType, str | None, str]


def allowed_by(grants: list[GrantSpec]) -> dict[ObjectKey, dict[str, list[str]]]:
    """(object type, schema, name) -> grantee -> privileges, from the Grant specs the program declares."""
    allowed: dict[ObjectKey, dict[str, list[str]]] = {}
    for grant in grants:
        keys: list[ObjectKey]
        if grant.object_type == "schema":
            keys = [("schema", None, grant.schema_name or "")]
        elif grant.object_type == "database":
            keys = [("database", None, "")]
        elif grant.object_type == "table":
            keys = [("table", grant.schema_name, name) for name in grant.objects]
        elif grant.object_type == "all_tables_in_schema":
            keys = [("table", grant.schema_name, name) for name in grant.covers]
        else:
            continue  # sequences and functions: none is managed here (a Function keeps its EXECUTE exact)
        for key in keys:
            held = allowed.setdefault(key, {}).setdefault(grant.grantee, [])
            held += [privilege for privilege in grant.privileges if privilege not in held]
    return allowed


def managed_objects(
    grants: list[GrantSpec], relations: list[tuple[str, str]], schemas: list[str], owner: str
) -> list[ObjectPrivileges]:
    """Every relation (schema, name), every schema (the stack's while `owner` owns it) and the database."""
    allowed = allowed_by(grants)
    return [
        *(
            ObjectPrivileges(
                object_type="table", schema_name=schema, name=name, allowed=allowed.get(("table", schema, name), {})
            )
            for schema, name in relations
        ),
        *(
            ObjectPrivileges(
                object_type="schema", name=name, owner=owner, allowed=allowed.get(("schema", None, name), {})
            )
            for name in schemas
        ),
        ObjectPrivileges(object_type="database", owner=owner, allowed=allowed.get(("database", None, ""), {})),
    ]
