"""Tenant-scoped searches, read from `sql/search.yaml`, and the two functions each becomes.

Beneath row level security PostgreSQL applies the policy's qual before any condition that passes a column
to a function or operator not marked LEAKPROOF (lower(), pg_trgm's %, ILIKE, @@, @>), so such a condition
cannot be an index condition: it filters every row of the caller's company. A search's matcher reads past
RLS (SECURITY DEFINER, owned by a BYPASSRLS role) with the company predicate written here, from the claims,
planned at each call for that company, so its index serves it; the function applications call reads the
matched rows back by key under their own RLS.
No search is special-cased: each is data (see the file's header).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from pydantic import Field, model_validator

from components.database.declared import SQL_DIR, read_yaml
from components.database.declared.model import TABLE_SCHEMA, TENANT_COLUMN, Data, SchemaModel
from components.database.declared.tenancy import COMPANY_HELPER
from components.database.kinds.function import FunctionSpec

SEARCH_FILE = SQL_DIR / "search.yaml"
#: What a search's `where` and `order_by` call its arguments: `search.<argument>`.
ALIAS = "search"
IDENTIFIER = r"^[a-z_][a-z0-9_]*$"


class ArgumentData(Data):
    name: str = Field(pattern=IDENTIFIER)
    type: str
    example: str = Field(description="SQL over a row of the table: a value of this argument that finds that row.")


class SearchData(Data):
    name: str = Field(pattern=IDENTIFIER, max_length=59)  # `<name>_ids` is a name too
    table: str
    description: str
    arguments: list[ArgumentData] = Field(min_length=1)
    where: str = Field(description="The match, SQL: the table by its name, arguments as search.<argument>.")
    order_by: str | None = None
    limit: int = Field(gt=0, le=1000)
    serves: list[str] = Field(min_length=1, description="Indexes of sql/schema the match reads through.")

    @model_validator(mode="after")
    def arguments_are_distinct(self) -> SearchData:
        names = [argument.name for argument in self.arguments]
        if len(set(names)) != len(names):
            raise ValueError(f"search {self.name}: arguments must have distinct names, got {names}")
        return self

    @property
    def matcher_name(self) -> str:
        return f"{self.name}_ids"

    def signature(self) -> str:
        """The identity argument list, `email text, phone text`: PostgREST passes arguments by these names."""
        return ", ".join(f"{argument.name} {argument.type}" for argument in self.arguments)

    def parameters(self) -> list[sql.Composable]:
        return [sql.SQL(f"${position}") for position in range(1, len(self.arguments) + 1)]

    def company_parameter(self) -> sql.Composable:
        """The matcher's query takes the company after the arguments."""
        return sql.SQL(f"${len(self.arguments) + 1}")

    def source(self) -> sql.Composable:
        """`public.<table> AS <table> CROSS JOIN (SELECT $1 AS <argument>, ...) AS search`: inside a SQL
        function a column wins over a parameter of the same name, so arguments get a name of their own."""
        named = sql.SQL(", ").join(
            sql.SQL("{} AS {}").format(parameter, sql.Identifier(argument.name))
            for parameter, argument in zip(self.parameters(), self.arguments, strict=True)
        )
        return sql.SQL("{} AS {} CROSS JOIN (SELECT {}) AS {}").format(
            sql.Identifier(TABLE_SCHEMA, self.table), sql.Identifier(self.table), named, sql.Identifier(ALIAS)
        )

    def ordering(self) -> sql.Composable:
        return sql.SQL(" ORDER BY {}").format(sql.SQL(self.order_by)) if self.order_by else sql.SQL("")

    def matcher_query(self) -> sql.Composable:
        """The ids of a company's matching rows: the company (its parameter) ANDed to the match."""
        query = "SELECT {id} FROM {source} WHERE {company} = {parameter} AND ({where}){order} LIMIT {limit}"
        return sql.SQL(query).format(
            id=sql.Identifier(self.table, "id"),
            source=self.source(),
            company=sql.Identifier(self.table, TENANT_COLUMN),
            parameter=self.company_parameter(),
            where=sql.SQL(self.where),
            order=self.ordering(),
            limit=sql.Literal(self.limit),
        )

    def matcher_body(self) -> sql.Composable:
        """PL/pgSQL running the matcher's query for the claims' company, planned at every call with its
        values (EXECUTE ... USING: a custom plan): the planner sees which company it reads, and a company of
        50,000 customers is read through the search's index where one of 50 is simply scanned. A SQL
        function's query would be planned once, for the average company."""
        arguments = [sql.Identifier(argument.name) for argument in self.arguments]
        return sql.SQL("BEGIN\n  RETURN QUERY EXECUTE {} USING {};\nEND").format(
            sql.Literal(self.matcher_query().as_string()), sql.SQL(", ").join([*arguments, sql.SQL(COMPANY_HELPER)])
        )

    def rows_query(self, matcher_schema: str) -> sql.Composable:
        """The matched rows in the matcher's order, each read by its key under the caller's row level
        security. LIMIT 1 keeps the lateral read one key lookup per id: flattened into a join, the planner
        (which sizes a company under RLS as the average one) may choose to scan the company's rows instead."""
        query = (
            "SELECT {row}.* FROM {matcher}({parameters}) WITH ORDINALITY AS {found} (id, rank) "
            "CROSS JOIN LATERAL (SELECT * FROM {table} AS {row} WHERE {row}.id = {found}.id LIMIT 1) AS {row} "
            "ORDER BY {found}.rank"
        )
        return sql.SQL(query).format(
            row=sql.Identifier(self.table),
            matcher=sql.Identifier(matcher_schema, self.matcher_name),
            parameters=sql.SQL(", ").join(self.parameters()),
            found=sql.Identifier("found"),
            table=sql.Identifier(TABLE_SCHEMA, self.table),
        )


class SearchModel(Data):
    owner: str = Field(description="Owns the matchers: a role with BYPASSRLS and SELECT on the tables.")
    matcher_schema: str
    schema_name: str = Field(alias="schema")
    callers: list[str] = Field(min_length=1)
    searches: list[SearchData]

    def check_against(self, schema: SchemaModel) -> SearchModel:
        """Each search's table is a company table with an `id`, and the indexes it names are that table's."""
        for search in self.searches:
            table = next((t for t in schema.tables if t.name == search.table), None)
            if table is None or table.tenancy != "company" or "id" not in {c.name for c in table.columns}:
                raise ValueError(f"search {search.name}: {search.table} is not a company table with an id")
            unknown = set(search.serves) - {index.name for index in table.indexes}
            if unknown:
                raise ValueError(f"search {search.name}: serves {sorted(unknown)}, not indexes of {search.table}")
        return self

    def function_specs(self, table_owner: str) -> list[FunctionSpec]:
        """Per search its matcher, then the function applications call (which calls the matcher)."""
        specs = []
        for search in self.searches:
            specs += [
                FunctionSpec(
                    schema_name=self.matcher_schema,
                    name=search.matcher_name,
                    arguments=search.signature(),
                    returns="SETOF uuid",
                    language="plpgsql",
                    body=search.matcher_body().as_string(),
                    volatility="stable",
                    security_definer=True,
                    search_path="",
                    owner=self.owner,
                    grant_execute_to=self.callers,
                ),
                FunctionSpec(
                    schema_name=self.schema_name,
                    name=search.name,
                    arguments=search.signature(),
                    returns="SETOF " + sql.Identifier(TABLE_SCHEMA, search.table).as_string(),
                    body=search.rows_query(self.matcher_schema).as_string(),
                    volatility="stable",
                    owner=table_owner,
                    grant_execute_to=self.callers,
                ),
            ]
        return specs


def load_searches(schema: SchemaModel, path: Path = SEARCH_FILE) -> SearchModel:
    return SearchModel.model_validate(read_yaml(path)).check_against(schema)


def explain_matcher(
    conn: psycopg.Connection[Any],
    model: SearchModel,
    search: SearchData,
    claims: str,
    values: Mapping[str, Any],
    options: str,
) -> list[Any]:
    """EXPLAIN (`options`) of a matcher's query as the matcher runs it: as its owner, for the company of
    `claims`, planned with its values. `conn` must be allowed to SET ROLE to the owner (the admin). The rows
    of EXPLAIN's output."""
    name = sql.Identifier(f"thorbis_explain_{search.name}")
    types = sql.SQL(", ").join([*(sql.SQL(argument.type) for argument in search.arguments), sql.SQL("uuid")])
    arguments = sql.SQL(", ").join(
        [*(sql.Literal(values[argument.name]) for argument in search.arguments), sql.SQL(COMPANY_HELPER)]
    )
    prepared = False
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (claims,))
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(model.owner)))
            conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            conn.execute(sql.SQL("PREPARE {} ({}) AS {}").format(name, types, search.matcher_query()))
            prepared = True  # a prepared statement outlives its transaction
            explain = sql.SQL("EXPLAIN ({}) EXECUTE {} ({})").format(sql.SQL(options), name, arguments)
            return conn.execute(explain).fetchall()
    finally:
        if prepared:
            conn.execute(sql.SQL("DEALLOCATE {}").format(name))
