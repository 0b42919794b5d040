"""Operations as data: retention procedures (`sql/maintenance.yaml`), pg_cron jobs (`sql/jobs.yaml`) and
the monitoring views (`sql/monitoring.yaml`), read into typed models that give the kinds' specs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from components.database.declared import SQL_DIR, read_yaml
from components.database.declared.jobs import JobData
from components.database.declared.model import Data
from components.database.kinds.cron_job import CronJobSpec
from components.database.kinds.function import FunctionSpec
from components.database.kinds.grant import GrantSpec
from components.database.kinds.statistics_access import StatisticsAccessSpec
from components.database.kinds.view import ViewSpec

MAINTENANCE_FILE = SQL_DIR / "maintenance.yaml"
MONITORING_FILE = SQL_DIR / "monitoring.yaml"


# --- maintenance.yaml: procedures ---------------------------------------------------------------------


class ProcedureData(Data):
    name: str
    description: str
    arguments: str
    language: Literal["plpgsql", "sql"] = "plpgsql"
    body: str


class MaintenanceModel(Data):
    schema_name: str = Field(alias="schema")
    execute: list[str]
    procedures: list[ProcedureData]

    def procedure_specs(self, owner: str) -> list[FunctionSpec]:
        """SECURITY INVOKER and no search_path: what lets a procedure COMMIT between its batches."""
        return [
            FunctionSpec(
                kind="procedure",
                schema_name=self.schema_name,
                name=procedure.name,
                arguments=procedure.arguments,
                language=procedure.language,
                body=procedure.body,
                owner=owner,
                grant_execute_to=self.execute,
            )
            for procedure in self.procedures
        ]


def load_maintenance(path: Path = MAINTENANCE_FILE) -> MaintenanceModel:
    return MaintenanceModel.model_validate(read_yaml(path))


# --- jobs.yaml: pg_cron jobs (read by config, which may override their schedules and parameters) ---------


def cron_job_spec(job: JobData, database: str) -> CronJobSpec:
    return CronJobSpec(name=job.name, schedule=job.schedule, command=job.command, database=database)


# --- monitoring.yaml: views ---------------------------------------------------------------------------


class MonitoringViewData(Data):
    name: str
    description: str
    query: str


class MonitoringModel(Data):
    schema_name: str = Field(alias="schema")
    readers: list[str]
    reads: dict[str, list[str]] = Field(default_factory=dict, description="Tables of other schemas the views read.")
    statistics_withheld_from: list[str] = Field(description="Roles that read none of the server's statistics.")
    views: list[MonitoringViewData]

    def statistics_access_spec(self) -> StatisticsAccessSpec:
        return StatisticsAccessSpec(readers=self.readers, withheld_from=self.statistics_withheld_from)

    def view_specs(self, owner: str) -> list[ViewSpec]:
        return [
            ViewSpec(schema_name=self.schema_name, name=view.name, query=view.query, owner=owner) for view in self.views
        ]

    def grant_specs(self) -> list[GrantSpec]:
        """USAGE on the monitoring schema and on each schema the views read; SELECT on the views and on
        the tables they read there (named: the other tables of those schemas stay out of reach)."""
        grants: list[GrantSpec] = []
        for reader in self.readers:
            grants += [
                GrantSpec(grantee=reader, privileges=["USAGE"], object_type="schema", schema_name=schema_name)
                for schema_name in [self.schema_name, *self.reads]
            ]
            grants.append(
                GrantSpec(
                    grantee=reader,
                    privileges=["SELECT"],
                    object_type="all_tables_in_schema",
                    schema_name=self.schema_name,
                    covers=sorted(view.name for view in self.views),
                )
            )
            grants += [
                GrantSpec(grantee=reader, privileges=["SELECT"], object_type="table", schema_name=name, objects=tables)
                for name, tables in self.reads.items()
            ]
        return grants


def load_monitoring(path: Path = MONITORING_FILE) -> MonitoringModel:
    return MonitoringModel.model_validate(read_yaml(path))
