"""Operations as data: retention procedures (`sql/maintenance.yaml`), pg_cron jobs (`sql/jobs.yaml`) and
the monitoring views (`sql/monitoring.yaml`), read into typed models that give the kinds' specs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, PositiveInt, model_validator

from components.database.declared import SQL_DIR
from components.database.declared.model import Data
from components.database.kinds.cron_job import CronJobSpec
from components.database.kinds.function import FunctionSpec
from components.database.kinds.grant import GrantSpec
from components.database.kinds.view import ViewSpec

MAINTENANCE_FILE = SQL_DIR / "maintenance.yaml"
JOBS_FILE = SQL_DIR / "jobs.yaml"
MONITORING_FILE = SQL_DIR / "monitoring.yaml"
#: `{name}` in a job's command: a parameter (camelCase, as a config key).
PLACEHOLDER = re.compile(r"\{([a-z][A-Za-z0-9]*)\}")


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
    return MaintenanceModel.model_validate(yaml.safe_load(path.read_text()))


# --- jobs.yaml: pg_cron jobs --------------------------------------------------------------------------


class JobData(Data):
    name: str
    description: str
    schedule: str
    command: str


class JobsModel(Data):
    parameters: dict[str, PositiveInt]
    jobs: list[JobData]

    @model_validator(mode="after")
    def placeholders_are_parameters(self) -> JobsModel:
        for job in self.jobs:
            unknown = set(PLACEHOLDER.findall(job.command)) - set(self.parameters)
            if unknown:
                raise ValueError(f"job {job.name}: unknown parameter(s) {', '.join(sorted(unknown))}")
        return self

    def resolved(self, schedules: Mapping[str, str], parameters: Mapping[str, int]) -> list[JobData]:
        """The jobs with the stack's schedules and parameter values, where set, in place of the defaults."""
        problems = [f"no job named {name}" for name in sorted(set(schedules) - {job.name for job in self.jobs})]
        problems += [f"no job parameter {name}" for name in sorted(set(parameters) - set(self.parameters))]
        problems += [f"{name} must be a positive integer, not {value!r}" for name, value in parameters.items()
                     if isinstance(value, bool) or not isinstance(value, int) or value < 1]  # fmt: skip
        if problems:
            raise ValueError(f"jobs ({JOBS_FILE.name}): {'; '.join(problems)}")
        values = {**self.parameters, **parameters}
        return [
            job.model_copy(
                update={
                    "schedule": schedules.get(job.name, job.schedule),
                    "command": PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), job.command),
                }
            )
            for job in self.jobs
        ]


def load_jobs(
    schedules: Mapping[str, str] | None = None, parameters: Mapping[str, int] | None = None, path: Path = JOBS_FILE
) -> list[JobData]:
    """The jobs of `jobs.yaml`, their schedules and parameters overridden by the stack's config."""
    model = JobsModel.model_validate(yaml.safe_load(path.read_text()))
    return model.resolved(schedules or {}, parameters or {})


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
    views: list[MonitoringViewData]

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
    return MonitoringModel.model_validate(yaml.safe_load(path.read_text()))
