"""thorbisdb:db:Role — a role: its attributes, password (as a SCRAM verifier) and memberships.

The password is sent as a SCRAM-SHA-256 verifier computed here, so the plain text never reaches the
server, its log or pg_stat_statements. A role that already exists is adopted, never recreated; a role of
the platform (`adoptExisting`: Supabase's anon, authenticated, service_role) is never dropped either; on a
plain server, where such a role is missing, it is created (and still left in place by destroy).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import stringprep
import unicodedata
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

TOKEN = "thorbisdb:db:Role"
SCRAM_ITERATIONS = 4096
StoredPassword = Literal["scram-sha-256", "md5", "none"]


class RoleSpec(Spec):
    name: Replace[str] = Field(description="Role name.")
    login: bool = Field(default=False, description="Whether the role may log in.")
    password: Secret[str | None] = Field(default=None, description="Password (secret); None leaves it unmanaged.")
    bypass_rls: bool = Field(default=False, description="Whether row level security is bypassed.")
    inherit: bool = Field(default=True, description="Whether privileges of the roles it belongs to are used.")
    create_role: bool = Field(default=False, description="Whether the role may create roles.")
    connection_limit: int = Field(default=-1, ge=-1, description="Concurrent connections allowed; -1: no limit.")
    member_of: list[str] = Field(default_factory=list, description="Roles this role is a member of.")
    adopt_existing: bool = Field(
        default=False,
        description="The role may belong to the platform (Supabase's anon, ...): adopted when it exists, created "
        "when it does not, and never dropped, since the stack cannot tell whether others use it.",
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


# --- the password, as PostgreSQL keeps it ---------------------------------------------------------------
# Hand-written: libpq's PQencryptPasswordConn picks its own salt, and observe must recompute the verifier
# with the salt and iterations the server stored to tell whether the password is still the declared one.

_SASLPREP_PROHIBITED: tuple[Callable[[str], bool], ...] = (
    stringprep.in_table_c12,
    stringprep.in_table_c21,
    stringprep.in_table_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
    stringprep.in_table_a1,
)


def saslprep(password: str) -> str:
    """RFC 4013 SASLprep as PostgreSQL applies it: ASCII is kept as is, and so is a password it rejects."""
    if password.isascii():
        return password
    mapped = "".join(
        " " if stringprep.in_table_c12(char) else char for char in password if not stringprep.in_table_b1(char)
    )
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    if any(check(char) for char in prepared for check in _SASLPREP_PROHIBITED):
        return password
    if any(stringprep.in_table_d1(char) for char in prepared) and (
        any(stringprep.in_table_d2(char) for char in prepared)
        or not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1]))
    ):
        return password
    return prepared


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The RFC 5803 SCRAM-SHA-256 secret `ALTER ROLE ... PASSWORD` stores as given (random 16-byte salt)."""
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


_SCRAM_SECRET = re.compile(r"SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+")


def stored_kind(stored: str | None) -> StoredPassword:
    if stored is None:
        return "none"
    return "scram-sha-256" if _SCRAM_SECRET.fullmatch(stored) else "md5"


def is_verifier_of(stored: str | None, password: str) -> bool:
    """Whether the stored secret is the SCRAM verifier of `password` (with the salt and iterations stored)."""
    match = _SCRAM_SECRET.fullmatch(stored or "")
    if match is None or stored is None:
        return False
    expected = scram_verifier(password, base64.b64decode(match[2]), int(match[1]))
    return hmac.compare_digest(expected, stored)


# --- read: the live role --------------------------------------------------------------------------------

ROLE_QUERY = """
SELECT r.rolcanlogin, r.rolbypassrls, r.rolinherit, r.rolcreaterole, r.rolconnlimit,
       ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
             WHERE m.member = r.oid ORDER BY 1)
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
)


@dataclass
class LiveRole:
    attributes: dict[str, Any]  # wire name -> value, for ATTRIBUTES and connectionLimit
    member_of: list[str]
    password_readable: bool
    stored_password: str | None = field(repr=False)


def read_role(conn: psycopg.Connection, name: str) -> LiveRole | None:
    row = conn.execute(ROLE_QUERY, (name,)).fetchone()
    if row is None:
        return None
    login, bypass_rls, inherit, create_role, limit, member_of = row
    readable = bool(scalar(conn, PASSWORD_READABLE_QUERY))
    stored = scalar(conn, PASSWORD_QUERY, (name,)) if readable else None
    attributes = {
        "login": login,
        "bypassRls": bypass_rls,
        "inherit": inherit,
        "createRole": create_role,
        "connectionLimit": limit,
    }
    return LiveRole(attributes, list(member_of), readable, stored)


def password_matches(live: LiveRole, spec: RoleSpec) -> bool | None:
    if spec.password is None or not live.password_readable:
        return None
    return is_verifier_of(live.stored_password, spec.password)


def status(live: LiveRole, spec: RoleSpec) -> RoleStatus:
    return RoleStatus(
        password_matches=password_matches(live, spec),
        stored_password=stored_kind(live.stored_password) if live.password_readable else None,
    )


def observed(live: LiveRole, spec: RoleSpec) -> Observed[RoleStatus]:
    """The live role in the spec's shape: memberships are the declared ones it still has. The password is
    never read back (only its verifier is stored): the status says whether the server's is the declared one."""
    inputs = {
        **spec.model_dump(by_alias=True),
        **live.attributes,
        "memberOf": [role for role in spec.member_of if role in live.member_of],
    }
    return Observed(inputs, status(live, spec))


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


def role_operations(spec: RoleSpec, live: LiveRole | None, old: dict[str, Any]) -> list[Operation]:
    """CREATE or ALTER ROLE, then the memberships granted or revoked, in one transaction."""
    role = sql.Identifier(spec.name)
    options = attribute_options(spec, live)
    password = password_option(live, spec, old.get("password"))
    if password is not None:
        options.append(password)
    statements: list[Statement] = []
    if live is None:
        statements.append(sql.SQL("CREATE ROLE {} WITH {}").format(role, sql.SQL(" ").join(options)))
    elif options:
        statements.append(sql.SQL("ALTER ROLE {} WITH {}").format(role, sql.SQL(" ").join(options)))
    held = [] if live is None else live.member_of
    statements += [
        sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), role) for group in spec.member_of if group not in held
    ]
    statements += [
        sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(group), role)
        for group in old.get("memberOf") or []
        if group not in spec.member_of and group in held
    ]
    return shared(statements)


def dependents(conn: psycopg.Connection, name: str) -> list[str]:
    """What keeps the role from being dropped: objects it owns, privileges and policies that name it."""
    how = {"o": "owns", "a": "holds privileges on", "r": "is named in", "i": "holds initial privileges on"}
    return [f"{how.get(deptype, 'is needed by')} {what}" for what, deptype in conn.execute(OWNED_QUERY, (name,))]


class RoleKind(DatabaseKind[RoleSpec, RoleStatus]):
    token = TOKEN
    spec_type = RoleSpec
    status_type = RoleStatus

    def observe(self, resource_id: str, spec: RoleSpec) -> Observed[RoleStatus] | None:
        with connect(self.target) as conn:
            live = read_role(conn, spec.name)
        return None if live is None else observed(live, spec)

    def create(self, spec: RoleSpec) -> tuple[str, RoleStatus]:
        existed, made = self.converge(spec, {})
        return spec.name, made.model_copy(update={"adopted": existed})

    def update(self, resource_id: str, old: dict[str, Any], spec: RoleSpec) -> RoleStatus:
        return self.converge(spec, old)[1]

    def converge(self, spec: RoleSpec, old: dict[str, Any]) -> tuple[bool, RoleStatus]:
        """Create or alter the role: whether it existed, and the status of the role now."""
        with connect(self.target) as conn:
            live = read_role(conn, spec.name)
            self.apply(conn, role_operations(spec, live, old), what=f"role {spec.name}")
            now = read_role(conn, spec.name)
        assert now is not None
        return live is not None, status(now, spec)

    def delete(self, resource_id: str, spec: RoleSpec) -> None:
        if spec.adopt_existing:  # the platform's role: it outlives the stack
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
