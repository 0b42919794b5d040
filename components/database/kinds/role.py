"""thorbisdb:db:Role — a role: its attributes, password (as a SCRAM verifier) and memberships.

The password is sent as a SCRAM-SHA-256 verifier computed here, so the plain text never reaches the
server, its log or pg_stat_statements, nor an error message. A role the stack creates is managed whole:
its attributes, the roles it belongs to and the roles that belong to it are exactly the declared ones
(`GRANT authenticated TO anon` by hand is drift, revoked by `up`). A role that existed before the stack
(Supabase's anon, authenticated, service_role, authenticator) is adopted and never altered: no attribute,
password or membership of it changes but the declared memberships it lacks, and it is never dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import psycopg
from psycopg import sql
from pydantic import Field

from components.database.base import DatabaseKind
from components.database.ddl import Operation, shared
from components.database.session import Statement, connect, scalar
from components.kind import Expect, Observed, ProviderError, Replace, Secret, Spec, Status
from components.scram import is_scram_secret, is_verifier_of, scram_verifier

TOKEN = "thorbisdb:db:Role"
StoredPassword = Literal["scram-sha-256", "md5", "none"]


class RoleSpec(Spec):
    name: Replace[str] = Field(description="Role name.")
    login: bool = Field(default=False, description="Whether the role may log in.")
    password: Secret[str | None] = Field(default=None, description="Password (secret); None leaves it unmanaged.")
    bypass_rls: bool = Field(default=False, description="Whether row level security is bypassed.")
    inherit: bool = Field(default=True, description="Whether privileges of the roles it belongs to are used.")
    create_role: bool = Field(default=False, description="Whether the role may create roles.")
    superuser: bool = Field(default=False, description="Whether the role is a superuser.")
    create_db: bool = Field(default=False, description="Whether the role may create databases.")
    replication: bool = Field(default=False, description="Whether the role may stream replication.")
    connection_limit: int = Field(default=-1, ge=-1, description="Concurrent connections allowed; -1: no limit.")
    member_of: list[str] = Field(default_factory=list, description="Roles this role is a member of.")
    members: list[str] = Field(
        default_factory=list,
        description="Roles that may be members of this one (they declare it in their member_of); of a role the "
        "stack created, any other member is drift that `up` revokes.",
    )
    admin_member: bool = Field(
        default=False,
        description="The role the stack connects as is made a member, so that, without being a superuser, it "
        "may give objects to this role and act as their owner.",
    )
    adopt_existing: bool = Field(
        default=False,
        description="Never dropped, even when the stack created it (older stacks set it for Supabase's roles, "
        "which are now left alone because they existed before the stack).",
    )


class RoleStatus(Status):
    adopted: bool | None = Field(default=None, description="The role existed before the stack declared it.")
    password_matches: Annotated[bool | None, Expect(True)] = Field(
        default=None,
        description="Whether the server's SCRAM verifier is the declared password's (false: changed outside the "
        "stack, or stored as md5, or unset); None when the password is unmanaged or pg_authid is unreadable.",
    )
    stored_password: StoredPassword | None = Field(
        default=None, description="How the server stores the password; None when pg_authid is unreadable."
    )


def stored_kind(stored: str | None) -> StoredPassword:
    if stored is None:
        return "none"
    return "scram-sha-256" if is_scram_secret(stored) else "md5"


# --- read: the live role --------------------------------------------------------------------------------

ROLE_QUERY = """
SELECT r.rolcanlogin, r.rolbypassrls, r.rolinherit, r.rolcreaterole, r.rolsuper, r.rolcreatedb, r.rolreplication,
       r.rolconnlimit,
       ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
             WHERE m.member = r.oid ORDER BY 1),
       ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.member
             WHERE m.roleid = r.oid ORDER BY 1),
       current_user
FROM pg_roles r WHERE r.rolname = %s
"""
#: pg_authid is readable by superusers only (not by Supabase's `postgres`): then the password is not checked.
PASSWORD_READABLE_QUERY = "SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')"
PASSWORD_QUERY = "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = %s"
OWNED_QUERY = """
SELECT CASE WHEN d.dbid IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
            THEN pg_describe_object(d.classid, d.objid, d.objsubid)
            ELSE format('an object in database %%s', db.datname) END,
       d.deptype
FROM pg_shdepend d LEFT JOIN pg_database db ON db.oid = d.dbid
WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = (SELECT oid FROM pg_roles WHERE rolname = %s)
ORDER BY 2, 1
"""
#: Spec fields that are role attributes: (wire name, keyword when true, keyword when false).
ATTRIBUTES = (
    ("login", "LOGIN", "NOLOGIN"),
    ("bypassRls", "BYPASSRLS", "NOBYPASSRLS"),
    ("inherit", "INHERIT", "NOINHERIT"),
    ("createRole", "CREATEROLE", "NOCREATEROLE"),
    ("superuser", "SUPERUSER", "NOSUPERUSER"),
    ("createDb", "CREATEDB", "NOCREATEDB"),
    ("replication", "REPLICATION", "NOREPLICATION"),
)


@dataclass
class LiveRole:
    attributes: dict[str, Any]  # wire name -> value, for ATTRIBUTES and connectionLimit
    member_of: list[str]
    members: list[str]
    admin: str  # the role the stack connects as (current_user)
    password_readable: bool
    stored_password: str | None = field(repr=False)

    def other_members(self, spec: RoleSpec) -> list[str]:
        """Its members, but the admin where the spec makes the admin one."""
        return [member for member in self.members if not (spec.admin_member and member == self.admin)]


def read_role(conn: psycopg.Connection, name: str) -> LiveRole | None:
    row = conn.execute(ROLE_QUERY, (name,)).fetchone()
    if row is None:
        return None
    *flags, limit, member_of, members, admin = row
    readable = bool(scalar(conn, PASSWORD_READABLE_QUERY))
    stored = scalar(conn, PASSWORD_QUERY, (name,)) if readable else None
    attributes = {name: value for (name, _, _), value in zip(ATTRIBUTES, flags, strict=True)}
    attributes["connectionLimit"] = limit
    return LiveRole(attributes, list(member_of), list(members), admin, readable, stored)


def password_matches(live: LiveRole, spec: RoleSpec) -> bool | None:
    if spec.password is None or not live.password_readable:
        return None
    return is_verifier_of(live.stored_password, spec.password)


def status(live: LiveRole, spec: RoleSpec, adopted: bool) -> RoleStatus:
    """Of an adopted role the password is not the stack's: neither checked nor reported."""
    return RoleStatus(
        password_matches=None if adopted else password_matches(live, spec),
        stored_password=stored_kind(live.stored_password) if live.password_readable and not adopted else None,
    )


def observed(live: LiveRole, spec: RoleSpec, adopted: bool) -> Observed[RoleStatus]:
    """The live role in the spec's shape. One the stack created shows every attribute and membership it
    really has (an extra one is drift); an adopted one, only the declared memberships it still has. The
    password is never read back (only its verifier is stored): the status says whether it is the declared one."""
    inputs: dict[str, Any] = {
        **spec.model_dump(by_alias=True),
        "memberOf": [role for role in spec.member_of if role in live.member_of],
    }
    if not adopted:
        inputs |= {
            **live.attributes,
            "memberOf": sorted(live.member_of, key=order_of(spec.member_of)),
            "members": sorted(live.other_members(spec), key=order_of(spec.members)),
            "adminMember": live.admin in live.members,
        }
    return Observed(inputs, status(live, spec, adopted))


def order_of(declared: list[str]) -> Callable[[str], tuple[int, str]]:
    """Declared names first, in their declared order, then the others by name (a list equal to the declared
    one compares equal, whatever order the catalog gave)."""
    return lambda name: (declared.index(name) if name in declared else len(declared), name)


# --- render: the DDL that takes the live role to the spec -----------------------------------------------


def attribute_options(spec: RoleSpec, live: LiveRole | None) -> list[sql.Composable]:
    """Role options for the attributes that differ from the live role's (all of them for a new role)."""
    wanted = spec.model_dump(by_alias=True)
    options: list[sql.Composable] = [
        sql.SQL(on if wanted[name] else off)
        for name, on, off in ATTRIBUTES
        if live is None or live.attributes[name] != wanted[name]
    ]
    if live is None or live.attributes["connectionLimit"] != spec.connection_limit:
        options.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(spec.connection_limit)))
    return options


def password_option(live: LiveRole | None, spec: RoleSpec, previous: str | None) -> sql.Composable | None:
    if spec.password is None:  # a password the stack set before is removed; one it never set is left alone
        return sql.SQL("PASSWORD NULL") if previous is not None and live is not None else None
    if live is not None and password_matches(live, spec) is not False:
        return None
    return sql.SQL("PASSWORD {}").format(sql.Literal(scram_verifier(spec.password)))


def role_operations(spec: RoleSpec, live: LiveRole | None, old: dict[str, Any], adopted: bool) -> list[Operation]:
    """CREATE or ALTER ROLE (a statement that carries a password verifier is secret), then the memberships
    granted or revoked, in one transaction. An adopted role only gets the declared memberships it lacks."""
    role = sql.Identifier(spec.name)
    held = [] if live is None else live.member_of
    grants: list[Statement] = [
        sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), role) for group in spec.member_of if group not in held
    ]
    if adopted:
        return shared(grants)
    options = attribute_options(spec, live)
    password = password_option(live, spec, old.get("password"))
    operations: list[Operation] = []
    if live is None:
        operations.append(
            Operation(
                sql.SQL("CREATE ROLE {} WITH {}").format(role, sql.SQL(" ").join([*options, *optional(password)])),
                secret=password is not None,
            )
        )
    elif options or password is not None:
        alter = sql.SQL("ALTER ROLE {} WITH {}").format(role, sql.SQL(" ").join([*options, *optional(password)]))
        operations.append(Operation(alter, secret=password is not None))
    revokes: list[Statement] = [
        sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(group), role)
        for group in held
        if group not in spec.member_of
    ]
    extra_members = (
        [] if live is None else [member for member in live.other_members(spec) if member not in spec.members]
    )
    revokes += [sql.SQL("REVOKE {} FROM {}").format(role, sql.Identifier(member)) for member in extra_members]
    if spec.admin_member and (live is None or live.admin not in live.members):
        grants.append(sql.SQL("GRANT {} TO CURRENT_USER").format(role))
    return [*operations, *shared([*grants, *revokes])]


def optional(option: sql.Composable | None) -> list[sql.Composable]:
    return [] if option is None else [option]


def dependents(conn: psycopg.Connection, name: str) -> list[str]:
    """What keeps the role from being dropped: objects it owns, privileges and policies that name it."""
    how = {"o": "owns", "a": "holds privileges on", "r": "is named in", "i": "holds initial privileges on"}
    return [f"{how.get(deptype, 'is needed by')} {what}" for what, deptype in conn.execute(OWNED_QUERY, (name,))]


class RoleKind(DatabaseKind[RoleSpec, RoleStatus]):
    token = TOKEN
    spec_type = RoleSpec
    status_type = RoleStatus

    def observe(
        self, resource_id: str, spec: RoleSpec, recorded: RoleStatus | None = None
    ) -> Observed[RoleStatus] | None:
        with connect(self.target) as conn:
            live = read_role(conn, spec.name)
        return None if live is None else observed(live, spec, adopted=bool(recorded and recorded.adopted))

    def create(self, spec: RoleSpec) -> tuple[str, RoleStatus]:
        with connect(self.target) as conn:
            existed = read_role(conn, spec.name) is not None
        made = self.converge(spec, {}, adopted=existed)
        return spec.name, made.model_copy(update={"adopted": existed})

    def update(self, resource_id: str, old: dict[str, Any], spec: RoleSpec) -> RoleStatus:
        return self.converge(spec, old, adopted=self.status_of(old).adopted is True)

    def converge(self, spec: RoleSpec, old: dict[str, Any], adopted: bool) -> RoleStatus:
        """Create or alter the role (an adopted one: only its missing declared memberships); its status now."""
        with connect(self.target) as conn:
            live = read_role(conn, spec.name)
            if live is None and spec.login and spec.password is None:
                raise ProviderError(
                    f"role {spec.name} does not exist on this server and has no password to log in with: set its "
                    "password in the stack's config (pulumi config set --secret), then run `pulumi up` again"
                )
            self.apply(conn, role_operations(spec, live, old, adopted), what=f"role {spec.name}")
            now = read_role(conn, spec.name)
        assert now is not None
        return status(now, spec, adopted)

    def delete(self, resource_id: str, spec: RoleSpec, recorded: RoleStatus | None = None) -> None:
        if spec.adopt_existing or (recorded is not None and recorded.adopted):  # it existed before the stack
            return
        with connect(self.target) as conn:
            if scalar(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", (spec.name,)) is None:
                return
            blockers = dependents(conn, spec.name)
            if blockers:
                raise ProviderError(
                    f"refusing to drop role {spec.name}: it {'; '.join(blockers)}. The stack never reassigns or "
                    "drops what a role owns: give those objects another owner (ALTER ... OWNER TO, REASSIGN OWNED) "
                    "or drop them, remove the grants that name it, then run `pulumi up` again"
                )
            drop = sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(spec.name))
            self.apply(conn, shared([drop]), what=f"drop role {spec.name}")
