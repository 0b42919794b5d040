"""Row level security derived from a table's tenancy: four policies (SELECT, INSERT, UPDATE, DELETE)
for every table, each comparing with `(select app.current_company_id())` so the planner evaluates the
helper once per statement (an initPlan), not once per row. No policy widens access (no `OR is_public`)."""

from __future__ import annotations

from components.database.base import bounded
from components.database.declared.model import TABLE_SCHEMA, SchemaModel, TableData
from components.database.kinds.policy import Command, PolicySpec

COMPANY_HELPER = "app.current_company_id()"
CURRENT_COMPANY = f"(SELECT {COMPANY_HELPER})"
TENANT_ROLES = ["authenticated"]


def tenant_predicate(table: TableData, schema: SchemaModel) -> str:
    """The condition a row of `table` must meet to belong to the caller's company."""
    if table.tenancy == "company":
        return f"company_id = {CURRENT_COMPANY}"
    if table.tenancy == "self":
        return f"id = {CURRENT_COMPANY}"
    assert table.parent is not None, f"{table.name}: tenancy parent needs `parent`"
    parent = schema.table(table.parent.table)
    if parent.tenancy == "self":
        return f"{table.parent.column} = {CURRENT_COMPANY}"
    referenced = next(fk.ref_columns[0] for fk in table.foreign_key_constraints if fk.columns == [table.parent.column])
    # Uncorrelated on purpose: the subquery runs once per statement, and `column` can only mean the
    # policy's own table (a correlated `child.column` would not survive renaming the table).
    return (
        f"{table.parent.column} IN (SELECT p.{referenced} FROM {TABLE_SCHEMA}.{parent.name} p "
        f"WHERE p.company_id = {CURRENT_COMPANY})"
    )


def write_predicate(table: TableData) -> str:
    """What a written row must also meet: a parent-tenancy table has no company_id for a composite key, so
    its other references (job_tags.tag_id) must name rows of the caller's company (a foreign key ignores RLS)."""
    if table.tenancy != "parent":
        return ""
    checks = []
    for column, target in table.references_within_company():
        own = f"{column} IN (SELECT r.id FROM {TABLE_SCHEMA}.{target} r WHERE r.company_id = {CURRENT_COMPANY})"
        # a NULL reference names nobody: allowed (coalesce, not OR: no policy here has an OR that could widen it)
        checks.append(own if not table.column(column).nullable else f"coalesce({own}, true)")
    return "".join(f" AND {check}" for check in checks)


def tenant_policies(table: TableData, schema: SchemaModel) -> list[PolicySpec]:
    """SELECT, INSERT, UPDATE and DELETE for the tenant roles, each reaching the caller's company's rows."""
    predicate = tenant_predicate(table, schema)
    written = predicate + write_predicate(table)

    def policy(command: Command, using: str | None, with_check: str | None) -> PolicySpec:
        return PolicySpec(
            schema_name=TABLE_SCHEMA,
            table=table.name,
            name=bounded(f"{table.name}_tenant_{command.lower()}"),
            command=command,
            roles=TENANT_ROLES,
            using=using,
            with_check=with_check,
        )

    return [
        policy("SELECT", predicate, None),
        policy("INSERT", None, written),
        policy("UPDATE", predicate, written),
        policy("DELETE", predicate, None),
    ]


def read_all_policy(table: TableData, readers: list[str]) -> PolicySpec:
    """Every row of the table, to read only, for `readers` (reports across companies, the materialized
    views' owner): a policy in place of BYPASSRLS, which only a superuser may give a role."""
    return PolicySpec(
        schema_name=TABLE_SCHEMA,
        table=table.name,
        name=bounded(f"{table.name}_read_all"),
        command="SELECT",
        roles=readers,
        using="true",
    )
