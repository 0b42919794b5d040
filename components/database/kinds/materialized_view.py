"""thorbisdb:db:MaterializedView — a materialized view with the unique index concurrent refresh needs.

It is created WITH DATA, with a UNIQUE index (no WHERE, plain columns) so `REFRESH MATERIALIZED VIEW
CONCURRENTLY` works. The live query is pg_matviews' definition; the declared one is made a TEMPORARY view in a
rolled-back transaction and read back the same way (as view.py does), so only another query shows as drift.
A new query cannot be applied in place: the view is dropped and created again in one transaction that keeps
its grants and remakes the plain views that read it from their own definitions (else DROP would refuse).

REFRESH runs the query as the view's owner: when that owner is subject to the row level security of a table
it reads (no BYPASSRLS, or the table's owner under FORCE) and no policy shows it every row, a refresh
silently empties the view. That is refused before anything is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import psycopg
from psycopg import sql
from pydantic import Field

from components.database.base import DatabaseKind, bounded, copied_grants, qualified
from components.database.ddl import Operation, apply_drop, shared
from components.database.session import Statement, connect, scalar
from components.kind import Expect, Observed, ProviderError, Replace, Spec, Status

TOKEN = "thorbisdb:db:MaterializedView"


class MaterializedViewSpec(Spec):
    schema_name: Replace[str] = Field(description="Schema of the materialized view.")
    name: Replace[str] = Field(max_length=63, description="Materialized view name.")
    query: str = Field(description="The SELECT whose result is stored; qualify every table with its schema.")
    unique_index: list[str] = Field(
        min_length=1,
        description="Columns of the unique index (named <name>_key) that REFRESH ... CONCURRENTLY needs.",
    )
    owner: str | None = Field(
        default=None,
        description="Owning role; REFRESH runs the query as this role, so it must bypass the row level "
        "security of the tables read. None leaves the owner as it is.",
    )
    comment: str | None = Field(default=None, description="COMMENT ON the view; None leaves it as it is.")

    @property
    def index_name(self) -> str:
        return bounded(f"{self.name}_key")


class MaterializedViewStatus(Status):
    adopted: bool | None = Field(default=None, description="The view existed before the stack declared it.")
    populated: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="False: emptied by hand (REFRESH ... WITH NO DATA), every read fails; `up` fills it."
    )


# --- read: the live materialized view, in the spec's shape ----------------------------------------------

MATVIEW_QUERY = """
SELECT m.definition, m.matviewowner, m.ispopulated, obj_description(c.oid, 'pg_class'),
       (SELECT array_agg(a.attname::text ORDER BY k.position)
          FROM pg_index i
          CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, position)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indexrelid = to_regclass(%s) AND i.indrelid = c.oid
           AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL)
FROM pg_matviews m
JOIN pg_namespace n ON n.nspname = m.schemaname
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = m.matviewname
WHERE m.schemaname = %s AND m.matviewname = %s
"""
#: Tables the shadow view reads whose row level security hides rows from the would-be owner: it neither
#: bypasses RLS nor has a policy that shows it every row (`read_all` in sql/access.yaml).
HIDDEN_TABLES_QUERY = """
SELECT DISTINCT t.oid::regclass::text
FROM pg_rewrite r
JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid AND d.refclassid = 'pg_class'::regclass
JOIN pg_class t ON t.oid = d.refobjid AND t.oid <> r.ev_class
JOIN pg_roles o ON o.rolname = %s
WHERE r.ev_class = to_regclass(%s) AND t.relrowsecurity AND NOT (o.rolsuper OR o.rolbypassrls)
  AND NOT (t.relowner = o.oid AND NOT t.relforcerowsecurity)
  AND NOT EXISTS (SELECT FROM pg_policy p
                  WHERE p.polrelid = t.oid AND p.polpermissive AND p.polcmd IN ('r', '*')
                    AND (o.oid = ANY (p.polroles) OR 0 = ANY (p.polroles))
                    AND pg_get_expr(p.polqual, p.polrelid) = 'true')
ORDER BY 1
"""
#: Plain views that read the materialized view directly: DROP ... RESTRICT would refuse while they exist.
DEPENDENT_VIEWS_QUERY = """
SELECT DISTINCT v.oid, n.nspname, v.relname, pg_get_viewdef(v.oid), coalesce(v.reloptions, '{}'),
       pg_get_userbyid(v.relowner), obj_description(v.oid, 'pg_class')
FROM pg_depend d
JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
JOIN pg_class v ON v.oid = r.ev_class AND v.relkind = 'v'
JOIN pg_namespace n ON n.oid = v.relnamespace
WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = to_regclass(%s)
ORDER BY n.nspname, v.relname
"""


@dataclass(frozen=True)
class LiveMaterializedView:
    definition: str
    owner: str
    populated: bool
    comment: str | None
    unique_index: list[str]  # [] when there is no valid plain unique index under the declared name


@dataclass(frozen=True)
class DependentView:
    """A view on the materialized view, as the server writes it, to be made again after a rebuild."""

    label: str  # schema.name, for messages
    relation: sql.Identifier
    definition: str
    options: list[str]
    owner: str
    comment: str | None


def read_matview(conn: psycopg.Connection, spec: MaterializedViewSpec) -> LiveMaterializedView | None:
    index = qualified(spec.schema_name, spec.index_name).as_string(conn)
    row = conn.execute(MATVIEW_QUERY, (index, spec.schema_name, spec.name)).fetchone()
    if row is None:
        return None
    definition, owner, populated, comment, columns = row
    return LiveMaterializedView(definition, owner, bool(populated), comment, list(columns or []))


def declared_definition(conn: psycopg.Connection, spec: MaterializedViewSpec) -> tuple[str, list[str]]:
    """pg_get_viewdef of the declared query (a temporary view in a rolled-back transaction), and the tables
    it reads whose row level security would hide rows from the declared owner when it refreshes."""
    shadow = sql.Identifier("pg_temp", f"shadow_{spec.name}"[:63])
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("CREATE TEMPORARY VIEW {} AS {}").format(shadow, sql.SQL(spec.query)))
            relation = shadow.as_string(conn)
            row = conn.execute("SELECT pg_get_viewdef(to_regclass(%s))", (relation,)).fetchone()
            assert row is not None
            owner = spec.owner or str(scalar(conn, "SELECT current_user"))
            hidden = [table for (table,) in conn.execute(HIDDEN_TABLES_QUERY, (owner, relation))]
            return str(row[0]), hidden
    except psycopg.Error as error:
        raise ProviderError(
            f"materialized view {spec.schema_name}.{spec.name}: the query is not valid: {str(error).strip()}"
        ) from error


def observed(conn: psycopg.Connection, spec: MaterializedViewSpec) -> Observed[MaterializedViewStatus] | None:
    """The live view as a spec: the declared query when the server writes both alike, else the live one."""
    live = read_matview(conn, spec)
    if live is None:
        return None
    same_query = live.definition == declared_definition(conn, spec)[0]
    inputs = {
        "schemaName": spec.schema_name,
        "name": spec.name,
        "query": spec.query if same_query else live.definition,
        "uniqueIndex": live.unique_index,
        "owner": live.owner if spec.owner is not None else None,
        "comment": live.comment if spec.comment is not None else None,
    }
    return Observed(inputs, MaterializedViewStatus(populated=live.populated))


def dependent_views(conn: psycopg.Connection, spec: MaterializedViewSpec) -> list[DependentView]:
    relation = qualified(spec.schema_name, spec.name).as_string(conn)
    return [
        DependentView(
            f"{schema}.{name}",
            sql.Identifier(schema, name),
            definition.rstrip().rstrip(";"),
            list(options),
            owner,
            comment,
        )
        for _, schema, name, definition, options, owner, comment in conn.execute(DEPENDENT_VIEWS_QUERY, (relation,))
    ]


def index_statement(spec: MaterializedViewSpec) -> Statement:
    return sql.SQL("CREATE UNIQUE INDEX {} ON {} ({})").format(
        sql.Identifier(spec.index_name),
        qualified(spec.schema_name, spec.name),
        sql.SQL(", ").join(sql.Identifier(column) for column in spec.unique_index),
    )


def settings_statements(spec: MaterializedViewSpec, live: LiveMaterializedView | None) -> list[Statement]:
    """Owner and comment, where they are declared and differ from the live ones."""
    relation = qualified(spec.schema_name, spec.name)
    statements: list[Statement] = []
    if spec.owner is not None and (live is None or live.owner != spec.owner):
        statements.append(
            sql.SQL("ALTER MATERIALIZED VIEW {} OWNER TO {}").format(relation, sql.Identifier(spec.owner))
        )
    if spec.comment is not None and (live is None or live.comment != spec.comment):
        statements.append(sql.SQL("COMMENT ON MATERIALIZED VIEW {} IS {}").format(relation, sql.Literal(spec.comment)))
    return statements


def create_statements(spec: MaterializedViewSpec) -> list[Statement]:
    create = sql.SQL("CREATE MATERIALIZED VIEW {} AS {} WITH DATA").format(
        qualified(spec.schema_name, spec.name), sql.SQL(spec.query)
    )
    return [create, index_statement(spec), *settings_statements(spec, None)]


def remake_statements(view: DependentView) -> list[Statement]:
    """A dependent view made again from the server's own rendering of it, with its options and owner."""
    options = [option.partition("=") for option in view.options]
    with_options = sql.SQL(" WITH ({})").format(
        sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(key), sql.Literal(value)) for key, _, value in options
        )
    )
    statements: list[Statement] = [
        sql.SQL("CREATE VIEW {}{} AS {}").format(
            view.relation, with_options if options else sql.SQL(""), sql.SQL(view.definition)
        ),
        sql.SQL("ALTER VIEW {} OWNER TO {}").format(view.relation, sql.Identifier(view.owner)),
    ]
    if view.comment is not None:
        statements.append(sql.SQL("COMMENT ON VIEW {} IS {}").format(view.relation, sql.Literal(view.comment)))
    return statements


def repair_operations(spec: MaterializedViewSpec, live: LiveMaterializedView) -> list[Operation]:
    """Same query: the unique index, owner and comment brought back, and the rows if it was emptied."""
    relation = qualified(spec.schema_name, spec.name)
    statements: list[Statement] = []
    if live.unique_index != spec.unique_index:
        drop = sql.SQL("DROP INDEX IF EXISTS {}").format(qualified(spec.schema_name, spec.index_name))
        statements += [drop, index_statement(spec)]
    if not live.populated:  # CONCURRENTLY cannot fill a view that holds no data
        statements.append(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(relation))
    return shared(statements + settings_statements(spec, live))


def rebuild_operations(
    conn: psycopg.Connection, spec: MaterializedViewSpec, dependents: list[DependentView]
) -> list[Operation]:
    """Drop and create in one transaction (readers wait for it): the views on it are dropped first and
    made again after from their own definitions, and the grants are given again."""
    relation = qualified(spec.schema_name, spec.name)
    statements: list[Statement] = [sql.SQL("DROP VIEW {} RESTRICT").format(view.relation) for view in dependents]
    statements += [sql.SQL("DROP MATERIALIZED VIEW {} RESTRICT").format(relation), *create_statements(spec)]
    statements += copied_grants(conn, relation)
    for view in dependents:
        statements += remake_statements(view) + copied_grants(conn, view.relation)
    return shared(statements)


class MaterializedViewKind(DatabaseKind[MaterializedViewSpec, MaterializedViewStatus]):
    token = TOKEN
    spec_type = MaterializedViewSpec
    status_type = MaterializedViewStatus

    def observe(
        self, resource_id: str, spec: MaterializedViewSpec, recorded: MaterializedViewStatus | None = None
    ) -> Observed[MaterializedViewStatus] | None:
        with connect(self.target) as conn:
            return observed(conn, spec)

    def preview_status(self, spec: MaterializedViewSpec) -> MaterializedViewStatus:
        return MaterializedViewStatus(populated=True)

    def create(self, spec: MaterializedViewSpec) -> tuple[str, MaterializedViewStatus]:
        with connect(self.target) as conn:
            existed = read_matview(conn, spec) is not None
            self.converge(conn, spec)
        return f"{spec.schema_name}.{spec.name}", MaterializedViewStatus(adopted=existed, populated=True)

    def update(self, resource_id: str, old: dict[str, Any], spec: MaterializedViewSpec) -> MaterializedViewStatus:
        with connect(self.target) as conn:
            self.converge(conn, spec)
        return MaterializedViewStatus(populated=True)

    def converge(self, conn: psycopg.Connection, spec: MaterializedViewSpec) -> None:
        what = f"materialized view {spec.schema_name}.{spec.name}"
        definition, hidden = declared_definition(conn, spec)
        if hidden:
            raise ProviderError(
                f"{what}: its owner {spec.owner or '(the connecting role)'} is subject to the row level security of "
                f"{', '.join(hidden)}; REFRESH runs the query as the owner and would store no rows. Give it an owner "
                "with BYPASSRLS, or a SELECT policy USING (true) for it on those tables (and SELECT on them)"
            )
        live = read_matview(conn, spec)
        if live is None:
            self.apply(conn, shared(create_statements(spec)), what=what)
        elif live.definition != definition:
            self.rebuild(conn, spec, what)
        else:
            self.apply(conn, repair_operations(spec, live), what=what)

    def rebuild(self, conn: psycopg.Connection, spec: MaterializedViewSpec, what: str) -> None:
        dependents = dependent_views(conn, spec)
        try:
            apply_drop(conn, rebuild_operations(conn, spec, dependents), self.target.timeouts, what)
        except ProviderError as error:
            if not isinstance(error.__cause__, psycopg.errors.UndefinedColumn):
                raise
            views = ", ".join(view.label for view in dependents)
            raise ProviderError(
                f"{what}: the new query drops a column that {views} read(s) ({error.__cause__.diag.message_primary}); "
                "nothing was changed. Change or remove those views first, then run `pulumi up` again"
            ) from error

    def delete(
        self, resource_id: str, spec: MaterializedViewSpec, recorded: MaterializedViewStatus | None = None
    ) -> None:
        drop = sql.SQL("DROP MATERIALIZED VIEW IF EXISTS {} RESTRICT").format(qualified(spec.schema_name, spec.name))
        with connect(self.target) as conn:
            what = f"drop materialized view {spec.schema_name}.{spec.name}"
            apply_drop(conn, shared([drop]), self.target.timeouts, what)
