"""`sql/jobs.yaml`, the pg_cron jobs as data. The stack's config may override their schedules and
parameters (`thorbis:jobs`), so config reads the file (once per validation) and the database layer declares
the jobs as the validated settings resolve them (`StackSettings.jobs.resolved()`): this module imports
nothing of the kinds, so that config can use it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from psycopg import sql
from pydantic import BaseModel, ConfigDict, PositiveInt, model_validator

from components.database.declared import SQL_DIR, read_yaml

JOBS_FILE = SQL_DIR / "jobs.yaml"
#: `{name}` in a job's command: a parameter (camelCase, as a config key).
PLACEHOLDER = re.compile(r"\{([a-z][A-Za-z0-9]*)\}")


class JobData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    schedule: str
    command: str


class JobsFile(BaseModel):
    """The jobs and the defaults of their parameters, as declared."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parameters: dict[str, PositiveInt]
    jobs: list[JobData]

    @model_validator(mode="after")
    def placeholders_are_parameters(self) -> JobsFile:
        for job in self.jobs:
            unknown = set(PLACEHOLDER.findall(job.command)) - set(self.parameters) - set(DERIVED)
            if unknown:
                raise ValueError(f"job {job.name}: unknown parameter(s) {', '.join(sorted(unknown))}")
        return self

    @property
    def job_names(self) -> set[str]:
        return {job.name for job in self.jobs}

    def resolved(self, schedules: Mapping[str, str], parameters: Mapping[str, int]) -> list[JobData]:
        """The jobs with these schedules and parameter values (names the config validated) in place of the
        defaults."""
        values = {**{name: derive() for name, derive in DERIVED.items()}, **self.parameters, **parameters}
        return [
            job.model_copy(
                update={
                    "schedule": schedules.get(job.name, job.schedule),
                    "command": PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), job.command),
                }
            )
            for job in self.jobs
        ]


def partitioned_tables() -> str:
    """The partitioned tables of sql/schema as an SQL array, for the partition maintenance job."""
    # imported here, not above: config reads this module, and the schema model imports the kinds
    from components.database.declared.model import TABLE_SCHEMA, load_schema

    names = [f"{TABLE_SCHEMA}.{table.name}" for table in load_schema().tables if table.partition]
    return sql.SQL("ARRAY[{}]::text[]").format(sql.SQL(", ").join(sql.Literal(name) for name in names)).as_string()


#: Parameters of job commands that the program derives from the schema data (never set by config).
DERIVED = {"partitionedTables": partitioned_tables}


def load_jobs(path: Path = JOBS_FILE) -> JobsFile:
    return JobsFile.model_validate(read_yaml(path))
