"""thorbisdb:db:Function — a function or procedure: signature, body, volatility, security, search_path,
owner, EXECUTE.

The live function is found by schema, name and identity arguments in pg_proc. Its signature and
search_path are compared with how the server writes the declared ones: the declared function is made in
pg_temp inside a rolled-back transaction and read back, so `int` and `integer` compare equal. The body
is stored verbatim (prosrc), so it compares as text. A different signature is a different function: it
is replaced (dropped first, RESTRICT: objects that depend on it stop the drop with a clear error).
A procedure (`kind: procedure`) has no result, volatility or strictness; it may COMMIT between batches
only when it is SECURITY INVOKER without a SET clause (PostgreSQL forbids transaction control otherwise).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql
from pydantic import Field, field_validator, model_validator

from components.database.base import DatabaseKind, qualified
from components.database.ddl import Operation, apply_drop, shared
from components.database.session import Statement, connect
from components.kind import Observed, ProviderError, Replace, Spec, Status

TOKEN = "thorbisdb:db:Function"
Volatility = Literal["volatile", "stable", "immutable"]
RoutineKind = Literal["function", "procedure"]
_VOLATILITY: dict[str, Volatility] = {"v": "volatile", "s": "stable", "i": "immutable"}
_ROUTINE_KIND: dict[str, RoutineKind] = {"f": "function", "p": "procedure"}


class FunctionSpec(Spec):
    schema_name: Replace[str] = Field(description="Schema of the function.")
    name: Replace[str] = Field(description="Function name.")
    kind: RoutineKind = Field(default="function", description="FUNCTION (default) or PROCEDURE (run by CALL).")
    arguments: Replace[str] = Field(default="", description='Identity argument list, e.g. "" or "p_usename text".')
    returns: Replace[str | None] = Field(
        default=None,
        description='Return type of a function, e.g. "uuid", "trigger", "TABLE (a int)"; none for a procedure.',
    )
    language: Literal["sql", "plpgsql"] = Field(default="sql", description="Language of the body.")
    body: str = Field(description="The body, stored verbatim; qualify every name when search_path is ''.")
    volatility: Volatility = Field(default="volatile", description="VOLATILE (default), STABLE or IMMUTABLE.")
    security_definer: bool = Field(default=False, description="Run with the owner's rights (default: caller's).")
    search_path: str | None = Field(
        default=None, description="SET search_path: '' (empty) or comma-separated schemas; None leaves it unset."
    )
    strict: bool = Field(default=False, description="RETURNS NULL ON NULL INPUT (default: called on null input).")
    owner: str | None = Field(default=None, description="Owning role; None leaves the owner as it is.")
    grant_execute_to: list[str] | None = Field(
        default=None, description="The only roles with EXECUTE (revoked from PUBLIC); None leaves grants alone."
    )

    @field_validator("arguments")
    @classmethod
    def identity_only(cls, value: str) -> str:
        if re.search(r"\bdefault\b|=", value, re.IGNORECASE):
            raise ValueError("arguments is the identity argument list: argument defaults are not supported")
        return value

    @model_validator(mode="after")
    def procedure_has_no_function_clauses(self) -> FunctionSpec:
        what = f"{self.kind} {self.schema_name}.{self.name}"
        if self.kind == "function" and self.returns is None:
            raise ValueError(f"{what}: a function needs `returns`")
        if self.kind == "procedure" and (self.returns is not None or self.volatility != "volatile" or self.strict):
            raise ValueError(f"{what}: a procedure has no `returns`, `volatility` or `strict`")
        return self

    @model_validator(mode="after")
    def definer_has_fixed_search_path(self) -> FunctionSpec:
        if self.security_definer and self.search_path is None:
            raise ValueError(
                f"function {self.schema_name}.{self.name} is SECURITY DEFINER: set search_path (to '' and qualify "
                "every name), or a caller's search_path decides what it runs with its owner's rights"
            )
        return self


class FunctionStatus(Status):
    adopted: bool | None = Field(default=None, description="The function existed before the stack declared it.")


# --- read: the live function, in the spec's shape ----------------------------------------------------

FUNCTION_QUERY = """
SELECT p.prokind, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid), l.lanname, p.prosrc,
       p.provolatile, p.prosecdef, p.proisstrict, p.proconfig, pg_get_userbyid(p.proowner),
       ARRAY(SELECT CASE a.grantee WHEN 0 THEN 'public' ELSE pg_get_userbyid(a.grantee) END
             FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
             WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner ORDER BY 1)
FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
WHERE p.pronamespace = {namespace} AND p.proname = %s AND pg_get_function_identity_arguments(p.oid) = %s
  AND p.prokind IN ('f', 'p')
"""


@dataclass(frozen=True)
class LiveFunction:
    kind: RoutineKind
    arguments: str  # pg_get_function_arguments: identity arguments plus any defaults
    returns: str | None  # None for a procedure
    language: str
    body: str
    volatility: Volatility
    security_definer: bool
    strict: bool
    search_path: str | None  # as proconfig holds it: '""' for empty
    owner: str
    execute_grantees: list[str]  # 'public' for PUBLIC; the owner's own EXECUTE left out


def search_path_of(config: list[str] | None) -> str | None:
    for setting in config or []:
        name, _, value = setting.partition("=")
        if name == "search_path":
            return value
    return None


def read_function(conn: psycopg.Connection, namespace: sql.Composable, name: str, identity: str) -> LiveFunction | None:
    query = sql.SQL(FUNCTION_QUERY).format(namespace=namespace)
    row = conn.execute(query, (name, identity)).fetchone()
    if row is None:
        return None
    kind, arguments, returns, language, body, volatility, definer, strict, config, owner, grantees = row
    return LiveFunction(
        _ROUTINE_KIND[kind], arguments, returns, language, body, _VOLATILITY[volatility], definer, strict,
        search_path_of(config), owner, list(grantees),
    )  # fmt: skip


def schema_namespace(schema: str) -> sql.Composable:
    return sql.SQL("(SELECT oid FROM pg_namespace WHERE nspname = {})").format(sql.Literal(schema))


def canonical(conn: psycopg.Connection, spec: FunctionSpec) -> tuple[str, LiveFunction]:
    """The declared function as the server writes it (identity arguments and all): made in pg_temp in a
    rolled-back transaction, bodies unchecked (only the signature and settings are read back)."""
    shadow = sql.Identifier("pg_temp", spec.name)
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL check_function_bodies = off")
            conn.execute(create_statement(spec, shadow))
            identity = conn.execute(
                "SELECT pg_get_function_identity_arguments(p.oid) FROM pg_proc p "
                "WHERE p.pronamespace = pg_my_temp_schema() AND p.proname = %s",
                (spec.name,),
            ).fetchone()
            assert identity is not None
            live = read_function(conn, sql.SQL("pg_my_temp_schema()"), spec.name, identity[0])
            assert live is not None
            return identity[0], live
    except (psycopg.errors.UndefinedObject, psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as error:
        raise TypeGone(
            f"{spec.kind} {spec.schema_name}.{spec.name}: a type of its signature does not exist: {str(error).strip()}"
        ) from error
    except psycopg.Error as error:
        raise ProviderError(
            f"{spec.kind} {spec.schema_name}.{spec.name}: the spec is not a valid {spec.kind}: {str(error).strip()}"
        ) from error


class TypeGone(ProviderError):
    """A type the declared signature names does not exist (a table dropped by hand takes its row type, and
    the functions that return it, with it)."""


def read_declared(conn: psycopg.Connection, spec: FunctionSpec) -> tuple[LiveFunction | None, LiveFunction]:
    """The live function with the declared signature (None when missing), and the declared one as the
    server writes it."""
    identity, wanted = canonical(conn, spec)
    return read_function(conn, schema_namespace(spec.schema_name), spec.name, identity), wanted


def observed(live: LiveFunction, wanted: LiveFunction, spec: FunctionSpec) -> Observed[FunctionStatus]:
    """The live function as a spec: the declared text wherever the server writes both alike."""

    def declared_or_live(declared: Any, wanted_value: Any, live_value: Any) -> Any:
        return declared if live_value == wanted_value else live_value

    live_search_path = "" if live.search_path == '""' else live.search_path
    grants = spec.grant_execute_to
    if grants is not None and set(live.execute_grantees) != set(grants) - {live.owner}:
        grants = live.execute_grantees
    inputs = {
        "schemaName": spec.schema_name,
        "name": spec.name,
        "kind": live.kind,
        "arguments": declared_or_live(spec.arguments, wanted.arguments, live.arguments),
        "returns": declared_or_live(spec.returns, wanted.returns, live.returns),
        "language": live.language,
        "body": live.body,
        "volatility": live.volatility,
        "securityDefiner": live.security_definer,
        "searchPath": spec.search_path if live.search_path == wanted.search_path else live_search_path,
        "strict": live.strict,
        "owner": live.owner if spec.owner is not None else None,
        "grantExecuteTo": grants,
    }
    return Observed(inputs, FunctionStatus())


# --- render: the DDL ---------------------------------------------------------------------------------


def search_path_value(search_path: str) -> sql.Composable:
    """'' as an empty path; otherwise each schema as an identifier (one quoted string would be one name)."""
    schemas = [part.strip().removeprefix('"').removesuffix('"') for part in search_path.split(",") if part.strip()]
    return sql.SQL(", ").join(sql.Identifier(schema) for schema in schemas) if schemas else sql.Literal("")


def keyword(spec: FunctionSpec) -> sql.SQL:
    return sql.SQL(spec.kind.upper())


def create_statement(spec: FunctionSpec, function: sql.Identifier) -> Statement:
    clauses: list[sql.Composable] = [sql.SQL("LANGUAGE {}").format(sql.Identifier(spec.language))]
    if spec.kind == "function":
        clauses.append(sql.SQL(spec.volatility.upper()))
    clauses.append(sql.SQL("SECURITY DEFINER" if spec.security_definer else "SECURITY INVOKER"))
    if spec.kind == "function":
        clauses.append(sql.SQL("STRICT" if spec.strict else "CALLED ON NULL INPUT"))
    if spec.search_path is not None:
        clauses.append(sql.SQL("SET search_path = {}").format(search_path_value(spec.search_path)))
    result = sql.SQL("RETURNS {} ").format(sql.SQL(spec.returns)) if spec.returns is not None else sql.SQL("")
    return sql.SQL("CREATE OR REPLACE {} {}({}) {}{} AS {}").format(
        keyword(spec), function, sql.SQL(spec.arguments), result, sql.SQL(" ").join(clauses), sql.Literal(spec.body)
    )


def signature(spec: FunctionSpec) -> sql.Composable:
    return sql.SQL("{}({})").format(qualified(spec.schema_name, spec.name), sql.SQL(spec.arguments))


def role(name: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if name.lower() == "public" else sql.Identifier(name)


def privilege_statements(spec: FunctionSpec, current_grantees: list[str]) -> list[Statement]:
    """EXECUTE for exactly the declared roles: revoked from PUBLIC and from anyone else who has it."""
    if spec.grant_execute_to is None:
        return []
    function = signature(spec)
    revoked = {"public", *current_grantees} - set(spec.grant_execute_to)
    statements: list[Statement] = [
        sql.SQL("REVOKE EXECUTE ON {} {} FROM {}").format(keyword(spec), function, role(name))
        for name in sorted(revoked)
    ]
    if spec.grant_execute_to:
        statements.append(
            sql.SQL("GRANT EXECUTE ON {} {} TO {}").format(
                keyword(spec), function, sql.SQL(", ").join(role(name) for name in spec.grant_execute_to)
            )
        )
    return statements


def function_operations(spec: FunctionSpec, live: LiveFunction | None) -> list[Operation]:
    """CREATE OR REPLACE, owner and EXECUTE grants, in one transaction."""
    statements = [create_statement(spec, qualified(spec.schema_name, spec.name))]
    if spec.owner is not None:
        statements.append(
            sql.SQL("ALTER {} {} OWNER TO {}").format(keyword(spec), signature(spec), sql.Identifier(spec.owner))
        )
    return shared([*statements, *privilege_statements(spec, live.execute_grantees if live else [])])


def drop_operations(spec: FunctionSpec) -> list[Operation]:
    return shared([sql.SQL("DROP {} IF EXISTS {} RESTRICT").format(keyword(spec), signature(spec))])


class FunctionKind(DatabaseKind[FunctionSpec, FunctionStatus]):
    token = TOKEN
    spec_type = FunctionSpec
    status_type = FunctionStatus

    def observe(
        self, resource_id: str, spec: FunctionSpec, recorded: FunctionStatus | None = None
    ) -> Observed[FunctionStatus] | None:
        with connect(self.target) as conn:
            try:
                live, wanted = read_declared(conn, spec)
            except TypeGone:
                return None  # no function can have a signature whose type is gone
            return None if live is None else observed(live, wanted, spec)

    def create(self, spec: FunctionSpec) -> tuple[str, FunctionStatus]:
        with connect(self.target) as conn:
            existed = read_declared(conn, spec)[0] is not None
            self.converge(conn, spec)
        return f"{spec.schema_name}.{spec.name}({spec.arguments})", FunctionStatus(adopted=existed)

    def update(self, resource_id: str, old: dict[str, Any], spec: FunctionSpec) -> FunctionStatus:
        with connect(self.target) as conn:
            self.converge(conn, spec)
        return FunctionStatus()

    def converge(self, conn: psycopg.Connection, spec: FunctionSpec) -> None:
        """The function as declared; then EXECUTE revoked from any role that still has it (default
        privileges can grant it at creation)."""
        what = f"{spec.kind} {spec.schema_name}.{spec.name}"
        live, _ = read_declared(conn, spec)
        self.apply(conn, function_operations(spec, live), what=what)
        after, _ = read_declared(conn, spec)
        assert after is not None
        if spec.grant_execute_to is not None and set(after.execute_grantees) - set(spec.grant_execute_to):
            self.apply(conn, shared(privilege_statements(spec, after.execute_grantees)), what=what)

    def delete(self, resource_id: str, spec: FunctionSpec, recorded: FunctionStatus | None = None) -> None:
        what = f"drop {spec.kind} {spec.schema_name}.{spec.name}({spec.arguments})"
        with connect(self.target) as conn:
            apply_drop(conn, drop_operations(spec), self.target.timeouts, what)
