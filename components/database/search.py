"""Tenant-scoped searches, read from `sql/search.yaml`, and the two functions each becomes.

Beneath row level security PostgreSQL applies the policy's qual before any condition that passes a column
to a function or operator not marked LEAKPROOF (lower(), pg_trgm's %, ILIKE, @@, @>), so such a condition
cannot be an index condition: it filters every row of the caller's company. A search's matcher reads past
RLS (SECURITY DEFINER, owned by a BYPASSRLS role) with the company predicate written here, from the claims,
so its index serves it; the function applications call reads the matched rows back under RLS.
No search is special-cased: each is data (see the file's header).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql
from pydantic import Field, model_validator

from components.database.function import FunctionSpec
from components.database.model import TABLE_SCHEMA, TENANT_COLUMN, Data, SchemaModel
from components.database.tenancy import CURRENT_COMPANY

SEARCH_FILE = Path(__file__).resolve().parents[2] / "sql" / "search.yaml"
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
        """The ids of the caller's company's matching rows: the claims' company ANDed to the match."""
        query = "SELECT {id} FROM {source} WHERE {company} = {current} AND ({where}){order} LIMIT {limit}"
        return sql.SQL(query).format(
            id=sql.Identifier(self.table, "id"),
            source=self.source(),
            company=sql.Identifier(self.table, TENANT_COLUMN),
            current=sql.SQL(CURRENT_COMPANY),
            where=sql.SQL(self.where),
            order=self.ordering(),
            limit=sql.Literal(self.limit),
        )

    def rows_query(self, matcher_schema: str) -> sql.Composable:
        """The matched rows, read under the caller's row level security, in the search's order."""
        query = "SELECT {table}.* FROM {source} WHERE {id} = ANY (ARRAY(SELECT {matcher}({parameters}))){order}"
        return sql.SQL(query).format(
            table=sql.Identifier(self.table),
            source=self.source(),
            id=sql.Identifier(self.table, "id"),
            matcher=sql.Identifier(matcher_schema, self.matcher_name),
            parameters=sql.SQL(", ").join(self.parameters()),
            order=self.ordering(),
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
                    body=search.matcher_query().as_string(),
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
    return SearchModel.model_validate(yaml.safe_load(path.read_text())).check_against(schema)


def explain_matcher(
    conn: psycopg.Connection[Any],
    model: SearchModel,
    search: SearchData,
    claims: str,
    values: Mapping[str, Any],
    options: str,
) -> list[Any]:
    """EXPLAIN (`options`) of a matcher's query as the matcher runs it: as its owner, under `claims`, with a
    generic plan (a SQL function's statements are planned before its arguments are known). `conn` must be
    allowed to SET ROLE to the owner (the admin). The rows of EXPLAIN's output."""
    name = sql.Identifier(f"thorbis_explain_{search.name}")
    types = sql.SQL(", ").join(sql.SQL(argument.type) for argument in search.arguments)
    arguments = sql.SQL(", ").join(sql.Literal(values[argument.name]) for argument in search.arguments)
    prepared = False
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (claims,))
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(model.owner)))
            conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            conn.execute(sql.SQL("PREPARE {} ({}) AS {}").format(name, types, search.matcher_query()))
            prepared = True  # a prepared statement outlives its transaction
            explain = sql.SQL("EXPLAIN ({}) EXECUTE {} ({})").format(sql.SQL(options), name, arguments)
            return conn.execute(explain).fetchall()
    finally:
        if prepared:
            conn.execute(sql.SQL("DEALLOCATE {}").format(name))
