"""The reporting views, read from `sql/reporting.yaml`, and the specs derived from them: the materialized
views, the tenant views applications read them through, and the grants. Their refresh is scheduled as
pg_cron jobs in `sql/jobs.yaml`, one per view.

No view is special-cased: each tenant view is the same security-barrier filter on its materialized view's
`company_id`, read as its owner (so the caller needs no privilege on the materialized view).
"""

from __future__ import annotations

from pathlib import Path

from psycopg import sql
from pydantic import Field

from components.database.declared import SQL_DIR, read_yaml
from components.database.declared.model import Data
from components.database.declared.tenancy import CURRENT_COMPANY
from components.database.kinds.grant import GrantSpec
from components.database.kinds.materialized_view import MaterializedViewSpec
from components.database.kinds.view import ViewSpec

REPORTING_FILE = SQL_DIR / "reporting.yaml"


class ReportData(Data):
    name: str
    tenant_view: str = Field(description="The view (in tenant_view_schema) that shows the caller's company's rows.")
    unique_index: list[str] = Field(min_length=1)
    comment: str
    query: str


class ReportingModel(Data):
    schema_name: str = Field(alias="schema")
    schema_owner: str
    owner: str
    readers: list[str]
    tenant_view_schema: str
    tenant_view_owner: str
    materialized_views: list[ReportData]

    def materialized_view_specs(self) -> list[MaterializedViewSpec]:
        return [
            MaterializedViewSpec(
                schema_name=self.schema_name,
                name=report.name,
                query=report.query,
                unique_index=report.unique_index,
                owner=self.owner,
                comment=report.comment,
            )
            for report in self.materialized_views
        ]

    def tenant_view_specs(self) -> list[ViewSpec]:
        """Security barrier (a caller's leaky function cannot see other rows), read as the owner, one company."""
        return [
            ViewSpec(
                schema_name=self.tenant_view_schema,
                name=report.tenant_view,
                query=sql.SQL("SELECT * FROM {} WHERE company_id = {}")
                .format(sql.Identifier(self.schema_name, report.name), sql.SQL(CURRENT_COMPANY))
                .as_string(),
                security_barrier=True,
                security_invoker=False,
                owner=self.tenant_view_owner,
            )
            for report in self.materialized_views
        ]

    def grant_specs(self) -> list[GrantSpec]:
        """The schema for the owner (USAGE: a concurrent refresh reads the view as its owner; CREATE: a
        non-superuser may give it a view only then); USAGE and SELECT for the readers and the tenant views'
        owner. Tenant views get their grants as tables of their schema (access.yaml's table_privileges)."""
        views = [report.name for report in self.materialized_views]
        grants = [
            GrantSpec(
                grantee=self.owner, privileges=["USAGE", "CREATE"], object_type="schema", schema_name=self.schema_name
            )
        ]
        for reader in dict.fromkeys([*self.readers, self.tenant_view_owner]):
            if reader != self.schema_owner:
                grants.append(
                    GrantSpec(grantee=reader, privileges=["USAGE"], object_type="schema", schema_name=self.schema_name)
                )
            if views:
                grants.append(
                    GrantSpec(
                        grantee=reader,
                        privileges=["SELECT"],
                        object_type="table",
                        schema_name=self.schema_name,
                        objects=views,
                    )
                )
        return grants


def load_reporting(path: Path = REPORTING_FILE) -> ReportingModel:
    return ReportingModel.model_validate(read_yaml(path))
