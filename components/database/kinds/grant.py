"""thorbisdb:db:Grant — privileges a role holds on a database, a schema, or tables, sequences and functions.

What is held is read from the objects' own ACLs (aclexplode), so only this grantee's direct grants count:
a privilege it has through PUBLIC or a role it belongs to does not hide a grant revoked by hand. Each
declared privilege is reported when every object holds it; a missing one drops out and shows as drift.
A relation is given only what it can honour: INSERT, UPDATE or DELETE on a view (or materialized view)
that cannot take that command is never granted, and one held anyway is drift that `up` revokes.
The status records which privileges the stack itself granted (those the grantee lacked), so that deleting
the grant revokes exactly those: Supabase's USAGE on `public` for anon, there before, stays.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql
from pydantic import Field, field_validator, model_validator

from components.database.base import DatabaseKind
from components.database.ddl import Operation, shared
from components.database.session import Statement, connect, scalar
from components.kind import Observed, ProviderError, Replace, Spec, Status

TOKEN = "thorbisdb:db:Grant"
ObjectType = Literal[
    "database",
    "schema",
    "table",
    "all_tables_in_schema",
    "sequence",
    "all_sequences_in_schema",
    "function",
    "all_functions_in_schema",
]
#: Privileges each family of objects takes (ALL is refused: a spec names what it grants).
PRIVILEGES = {
    "database": ("CREATE", "CONNECT", "TEMPORARY"),
    "schema": ("USAGE", "CREATE"),
    "table": ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"),
    "sequence": ("USAGE", "SELECT", "UPDATE"),
    "function": ("EXECUTE",),
}
FAMILY = {
    "database": "database",
    "schema": "schema",
    "table": "table",
    "all_tables_in_schema": "table",
    "sequence": "sequence",
    "all_sequences_in_schema": "sequence",
    "function": "function",
    "all_functions_in_schema": "function",
}
NAMED_OBJECTS = frozenset({"database", "table", "sequence", "function"})
_SIGNATURE = re.compile(r"\s*([^()]+?)\s*\((.*)\)\s*")


def normalise_privileges(values: list[str]) -> list[str]:
    """Upper case, TEMP spelled TEMPORARY, each once, in the declared order."""
    spelled = [" ".join(value.upper().split()) for value in values]
    return list(dict.fromkeys("TEMPORARY" if value == "TEMP" else value for value in spelled))


def check_privileges(privileges: list[str], family: str, what: str) -> None:
    allowed = PRIVILEGES[family]
    wrong = [privilege for privilege in privileges if privilege not in allowed]
    if wrong:
        raise ValueError(f"{', '.join(wrong)} cannot be granted on {what}; choose from {', '.join(allowed)}")
    if not privileges:
        raise ValueError("privileges must name at least one privilege")


def grantee_sql(name: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if name.upper() == "PUBLIC" else sql.Identifier(name)


def role_oid(conn: psycopg.Connection, name: str) -> int | None:
    """The role's oid (0 for PUBLIC), None when it does not exist."""
    if name.upper() == "PUBLIC":
        return 0
    oid = scalar(conn, "SELECT oid FROM pg_roles WHERE rolname = %s", (name,))
    return None if oid is None else int(oid)


class GrantSpec(Spec):
    grantee: Replace[str] = Field(description="Role that receives the privileges (PUBLIC for everyone).")
    privileges: list[str] = Field(description='Privileges, e.g. ["SELECT", "INSERT"], ["USAGE"], ["EXECUTE"].')
    object_type: Replace[ObjectType] = Field(description="What the privileges are on.")
    schema_name: Replace[str | None] = Field(
        default=None, description="Schema of the objects; required but for database."
    )
    objects: list[str] = Field(
        default_factory=list,
        description="Names of tables, sequences or databases (default: this one), or functions with their "
        'argument types ("current_company_id()"); empty for schema and all_*_in_schema.',
    )
    with_grant_option: bool = Field(default=False, description="Whether the grantee may grant them on.")
    covers: list[str] = Field(
        default_factory=list,
        description="all_*_in_schema only: the objects it covers, none other of the schema (a partition, a "
        "table the stack does not declare); empty: every one. A change re-runs the grant, so objects adopted or "
        "created after it (which default privileges miss) get its privileges too.",
    )

    @field_validator("privileges")
    @classmethod
    def _normalise(cls, values: list[str]) -> list[str]:
        return normalise_privileges(values)

    @model_validator(mode="after")
    def _consistent(self) -> GrantSpec:
        check_privileges(self.privileges, FAMILY[self.object_type], self.object_type)
        if self.object_type != "database" and not self.schema_name:
            raise ValueError(f"schemaName is required for objectType {self.object_type}")
        if self.object_type in ("table", "sequence", "function") and not self.objects:
            raise ValueError(f"objects must name at least one {self.object_type}")
        if self.covers and not self.object_type.startswith("all_"):
            raise ValueError(f"covers is for all_*_in_schema grants, not objectType {self.object_type}")
        if self.object_type not in NAMED_OBJECTS and self.objects:
            raise ValueError(f"objects must be empty for objectType {self.object_type} (schemaName says which)")
        if self.object_type == "function":
            unsigned = [name for name in self.objects if not _SIGNATURE.fullmatch(name)]
            if unsigned:
                raise ValueError(f"functions need their argument types, e.g. {unsigned[0]}(): {', '.join(unsigned)}")
        return self


class GrantStatus(Status):
    granted: list[str] | None = Field(
        default=None,
        description="What the stack granted (PRIVILEGE object), which delete revokes; None in states older than "
        "the field, whose delete revokes every declared privilege.",
    )


# --- read: which objects the spec covers, and what the grantee holds on them ----------------------------


@dataclass(frozen=True)
class Catalog:
    """Where a family's objects and their ACLs live, and how GRANT names that family."""

    table: str
    acl: str
    owner: str
    default_acl: str  # acldefault()'s code: the ACL a NULL one stands for
    keyword: str


CATALOGS = {
    "database": Catalog("pg_database", "datacl", "datdba", "d", "DATABASE"),
    "schema": Catalog("pg_namespace", "nspacl", "nspowner", "n", "SCHEMA"),
    "table": Catalog("pg_class", "relacl", "relowner", "r", "TABLE"),
    "sequence": Catalog("pg_class", "relacl", "relowner", "s", "SEQUENCE"),
    "function": Catalog("pg_proc", "proacl", "proowner", "f", "FUNCTION"),
}
RELKINDS = {"table": ["r", "p", "v", "m", "f"], "sequence": ["S"]}  # what ALL TABLES / SEQUENCES IN SCHEMA cover
#: pg_relation_is_updatable's bit of each command a relation may not be able to take (1 << CmdType).
COMMAND_BITS = {"UPDATE": 1 << 2, "INSERT": 1 << 3, "DELETE": 1 << 4}
ALL_COMMANDS = sum(COMMAND_BITS.values())
RELATIONS_QUERY = """
SELECT c.oid, c.relname, pg_relation_is_updatable(c.oid, true)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind::text = ANY(%s) AND (%s::text[] IS NULL OR c.relname = ANY(%s::text[]))
ORDER BY c.relname
"""
FUNCTIONS_QUERY = """
SELECT p.oid, p.proname, pg_get_function_identity_arguments(p.oid)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = %s AND p.prokind <> 'p' ORDER BY 2, 3
"""
ONE_FUNCTION_QUERY = (
    "SELECT p.oid, p.proname, pg_get_function_identity_arguments(p.oid) FROM pg_proc p WHERE p.oid = %s"
)


@dataclass(frozen=True)
class Grantable:
    """One object a grant covers: its name as declared, its oid, how GRANT names it, and for a relation
    the commands it can take (pg_relation_is_updatable's bits)."""

    declared: str
    oid: int
    name: sql.Composable
    commands: int = ALL_COMMANDS

    def honours(self, privilege: str) -> bool:
        """Whether the object can take what the privilege allows (a view over an aggregate takes no INSERT)."""
        return privilege not in COMMAND_BITS or bool(self.commands & COMMAND_BITS[privilege])


def function_name(schema: str, proname: str, identity_arguments: str) -> sql.Composable:
    # The argument list is the server's own rendering (pg_get_function_identity_arguments), not user text.
    return sql.Identifier(schema, proname) + sql.SQL("({})").format(sql.SQL(identity_arguments))


def resolve_function(conn: psycopg.Connection, schema: str, declared: str) -> Grantable | None:
    match = _SIGNATURE.fullmatch(declared)
    assert match is not None  # the spec checked it
    signature = f"{sql.Identifier(schema, match[1]).as_string(conn)}({match[2]})"
    try:
        oid = scalar(conn, "SELECT to_regprocedure(%s)::oid", (signature,))
    except psycopg.Error as error:
        raise ProviderError(f"grant on function {schema}.{declared}: not a valid signature: {error}") from error
    row = None if oid is None else conn.execute(ONE_FUNCTION_QUERY, (oid,)).fetchone()
    return None if row is None else Grantable(declared, int(row[0]), function_name(schema, row[1], row[2]))


def resolve(conn: psycopg.Connection, spec: GrantSpec, objects: list[str] | None = None) -> list[Grantable]:
    """The existing objects the spec covers (`objects` overrides the declared names), in a stable order."""
    names = spec.objects if objects is None else objects
    family, schema = FAMILY[spec.object_type], spec.schema_name or ""
    if family == "database":
        wanted = names or [conn.info.dbname]
        rows = conn.execute("SELECT oid, datname FROM pg_database WHERE datname = ANY(%s)", (wanted,)).fetchall()
        found = {name: oid for oid, name in rows}
        return [Grantable(name, int(found[name]), sql.Identifier(name)) for name in wanted if name in found]
    if family == "schema":
        oid = scalar(conn, "SELECT oid FROM pg_namespace WHERE nspname = %s", (schema,))
        return [] if oid is None else [Grantable(schema, int(oid), sql.Identifier(schema))]
    named = spec.object_type in NAMED_OBJECTS
    if family == "function":
        if named:
            return [target for name in names if (target := resolve_function(conn, schema, name)) is not None]
        return [  # ALL FUNCTIONS IN SCHEMA: aggregates and window functions too, procedures not
            Grantable(f"{proname}({arguments})", int(oid), function_name(schema, proname, arguments))
            for oid, proname, arguments in conn.execute(FUNCTIONS_QUERY, (schema,))
        ]
    # ALL TABLES IN SCHEMA with `covers`: those only (a customer's own tables, partitions, are not the stack's)
    filter_names = names if named else (spec.covers or None)
    rows = conn.execute(RELATIONS_QUERY, (schema, RELKINDS[family], filter_names, filter_names)).fetchall()
    # a sequence's UPDATE is setval(), not a command: only tables and views are asked what they take
    found = {name: (oid, commands if family == "table" else ALL_COMMANDS) for oid, name, commands in rows}
    order = names if named else sorted(found)
    return [
        Grantable(name, int(found[name][0]), sql.Identifier(schema, name), int(found[name][1]))
        for name in order
        if name in found
    ]


def held(conn: psycopg.Connection, family: str, targets: list[Grantable], grantee: int) -> dict[int, dict[str, bool]]:
    """oid -> {privilege: grantable} granted directly to `grantee` (a NULL ACL is the owner's default)."""
    catalog = CATALOGS[family]
    query = sql.SQL(
        "SELECT o.oid, a.privilege_type, a.is_grantable FROM {} o "
        "CROSS JOIN LATERAL aclexplode(coalesce(o.{}, acldefault({}, o.{}))) a "
        "WHERE o.oid = ANY(%s::oid[]) AND a.grantee = %s"
    ).format(
        sql.Identifier("pg_catalog", catalog.table),
        sql.Identifier(catalog.acl),
        sql.Literal(catalog.default_acl),
        sql.Identifier(catalog.owner),
    )
    acl: dict[int, dict[str, bool]] = {target.oid: {} for target in targets}
    for oid, privilege, grantable in conn.execute(query, ([target.oid for target in targets], grantee)):
        acl[int(oid)][privilege] = grantable
    return acl


def holds(acl: dict[int, dict[str, bool]], target: Grantable, privilege: str, with_grant_option: bool) -> bool:
    """As declared: held (with the grant option if declared) where the object honours it, absent where not."""
    grantable = acl[target.oid].get(privilege)
    if not target.honours(privilege):
        return grantable is None
    return grantable is not None and (grantable or not with_grant_option)


# --- render: GRANT and REVOKE ---------------------------------------------------------------------------


def grant_statement(spec: GrantSpec, privilege: str, targets: Iterable[Grantable]) -> Statement:
    return sql.SQL("GRANT {} ON {} {} TO {}{}").format(
        sql.SQL(privilege),
        sql.SQL(CATALOGS[FAMILY[spec.object_type]].keyword),
        sql.SQL(", ").join(target.name for target in targets),
        grantee_sql(spec.grantee),
        sql.SQL(" WITH GRANT OPTION" if spec.with_grant_option else ""),
    )


def revoke_statement(
    spec: GrantSpec, privileges: list[str], targets: list[Grantable], grant_option_only: bool = False
) -> Statement:
    return sql.SQL("REVOKE {}{} ON {} {} FROM {}").format(
        sql.SQL("GRANT OPTION FOR " if grant_option_only else ""),
        sql.SQL(", ").join(sql.SQL(privilege) for privilege in privileges),
        sql.SQL(CATALOGS[FAMILY[spec.object_type]].keyword),
        sql.SQL(", ").join(target.name for target in targets),
        grantee_sql(spec.grantee),
    )


def grant_operations(
    conn: psycopg.Connection, spec: GrantSpec, old: dict[str, Any]
) -> tuple[list[Operation], list[str]]:
    """REVOKE what was declared before and is no longer, then GRANT what is missing; and what it grants."""
    grantee = role_oid(conn, spec.grantee)
    if grantee is None:
        raise ProviderError(f"grant to {spec.grantee}: the role does not exist; declare it (a Role) first")
    targets = resolve(conn, spec)
    if not targets and FAMILY[spec.object_type] in ("schema", "database"):
        raise ProviderError(f"grant {grant_id(spec)}: the {FAMILY[spec.object_type]} does not exist; declare it first")
    acl = held(conn, FAMILY[spec.object_type], targets, grantee)
    statements: list[Statement] = []
    old_privileges = normalise_privileges(old.get("privileges") or [])
    dropped = [privilege for privilege in old_privileges if privilege not in spec.privileges]
    if dropped and targets:
        statements.append(revoke_statement(spec, dropped, targets))
    gone = [name for name in old.get("objects") or [] if name not in spec.objects]
    gone_targets = resolve(conn, spec, gone) if gone and spec.object_type in NAMED_OBJECTS else []
    if gone_targets and old_privileges:
        statements.append(revoke_statement(spec, old_privileges, gone_targets))
    if old.get("withGrantOption") and not spec.with_grant_option and targets:
        statements.append(revoke_statement(spec, spec.privileges, targets, grant_option_only=True))
    granting: list[str] = []
    for privilege in spec.privileges:
        wrong = [target for target in targets if not holds(acl, target, privilege, spec.with_grant_option)]
        if lacking := [target for target in wrong if target.honours(privilege)]:
            statements.append(grant_statement(spec, privilege, lacking))
            granting += [granted_item(privilege, target.declared) for target in lacking]
        if cannot := [target for target in wrong if not target.honours(privilege)]:
            statements.append(revoke_statement(spec, [privilege], cannot))
    return shared(statements), granting


def granted_item(privilege: str, declared: str) -> str:
    return f"{privilege} {declared}"


def still_granted(spec: GrantSpec, recorded: list[str], targets: list[Grantable]) -> list[str]:
    """What the stack granted before and is still declared (and not revoked by this change)."""
    declared = {granted_item(privilege, target.declared) for privilege in spec.privileges for target in targets}
    return [item for item in recorded if item in declared]


def grant_id(spec: GrantSpec) -> str:
    where = ".".join(part for part in (spec.schema_name, ",".join(spec.objects)) if part)
    return f"{spec.grantee}:{spec.object_type}:{where}"


class GrantKind(DatabaseKind[GrantSpec, GrantStatus]):
    token = TOKEN
    spec_type = GrantSpec
    status_type = GrantStatus

    def observe(
        self, resource_id: str, spec: GrantSpec, recorded: GrantStatus | None = None
    ) -> Observed[GrantStatus] | None:
        with connect(self.target) as conn:
            grantee = role_oid(conn, spec.grantee)
            if grantee is None:
                return None
            targets = resolve(conn, spec)
            acl = held(conn, FAMILY[spec.object_type], targets, grantee)
        found = {target.declared for target in targets}
        inputs = {
            **spec.model_dump(by_alias=True),
            "privileges": [
                privilege
                for privilege in spec.privileges
                if all(holds(acl, target, privilege, spec.with_grant_option) for target in targets)
            ],
            "objects": [name for name in spec.objects if name in found],
            # one gone (a view dropped by hand, made again in the same `up`) is drift: the grant runs again
            "covers": [name for name in spec.covers if name in found],
        }
        return Observed(inputs, GrantStatus())

    def create(self, spec: GrantSpec) -> tuple[str, GrantStatus]:
        return grant_id(spec), self.update("", {}, spec)

    def update(self, resource_id: str, old: dict[str, Any], spec: GrantSpec) -> GrantStatus:
        with connect(self.target) as conn:
            operations, granting = grant_operations(conn, spec, old)
            self.apply(conn, operations, what=f"grant {grant_id(spec)}")
            before = self.status_of(old).granted or []
            kept = still_granted(spec, before, resolve(conn, spec))
        return GrantStatus(granted=[*kept, *(item for item in granting if item not in kept)])

    def delete(self, resource_id: str, spec: GrantSpec, recorded: GrantStatus | None = None) -> None:
        """Revoke what the stack granted (every declared privilege, for a state that did not record it)."""
        with connect(self.target) as conn:
            if role_oid(conn, spec.grantee) is None:
                return
            targets = resolve(conn, spec)
            granted = None if recorded is None else recorded.granted
            statements = [
                revoke_statement(spec, [privilege], chosen)
                for privilege in spec.privileges
                if (chosen := [t for t in targets if granted is None or granted_item(privilege, t.declared) in granted])
            ]
            self.apply(conn, shared(statements), what=f"revoke {grant_id(spec)}")
