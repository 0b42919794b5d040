"""thorbisdb:db:CronJob — a pg_cron job, known by its unique job name: schedule, command, database, active.

The live job is its row in `cron.job` (pg_cron's own table, in the database `cron.database_name` names,
which is the one the provider connects to). A job changed with `cron.alter_job` or unscheduled by hand
is drift that `refresh` shows and `up` repairs. pg_cron does the scheduling itself: we only call its
functions (`schedule_in_database`, `alter_job`, `unschedule`), never write its tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from pydantic import Field

from components.database.base import DatabaseKind
from components.database.ddl import Operation, shared
from components.database.session import Statement, connect, scalar
from components.kind import Observed, ProviderError, Replace, Spec, Status

TOKEN = "thorbisdb:db:CronJob"


class CronJobSpec(Spec):
    name: Replace[str] = Field(description="The job's name, unique among the jobs of the role that schedules it.")
    schedule: str = Field(description="When it runs, in cron syntax ('5 * * * *') as pg_cron reads it.")
    command: str = Field(description="The SQL it runs, as one statement outside a transaction block (CALL, VACUUM).")
    database: str = Field(description="The database the command runs in.")
    active: bool = Field(default=True, description="False keeps the job but stops it from running.")


class CronJobStatus(Status):
    job_id: int | None = Field(default=None, description="pg_cron's id of the job (cron.job.jobid).")
    adopted: bool | None = Field(default=None, description="A job of that name existed before the stack declared it.")


# --- read: the live job, in the spec's shape ---------------------------------------------------------

#: The scheduling role's own job first: pg_cron's names are unique per (jobname, username).
JOB_QUERY = """
SELECT jobid, schedule, command, database, active FROM cron.job WHERE jobname = %s
ORDER BY username = current_user DESC, jobid LIMIT 1
"""


@dataclass(frozen=True)
class LiveJob:
    job_id: int
    schedule: str
    command: str
    database: str
    active: bool


def require_pg_cron(conn: psycopg.Connection) -> None:
    if scalar(conn, "SELECT to_regclass('cron.job') IS NOT NULL"):
        return
    database = scalar(conn, "SELECT current_database()")
    raise ProviderError(
        f"pg_cron is not installed in database {database}: declare the pg_cron extension (sql/access.yaml) before "
        f"the jobs, and preload it with cron.database_name = '{database}'"
    )


def read_job(conn: psycopg.Connection, name: str) -> LiveJob | None:
    require_pg_cron(conn)
    row = conn.execute(JOB_QUERY, (name,)).fetchone()
    return None if row is None else LiveJob(*row)


def observed(live: LiveJob, spec: CronJobSpec) -> Observed[CronJobStatus]:
    inputs = {
        "name": spec.name,
        "schedule": live.schedule,
        "command": live.command,
        "database": live.database,
        "active": live.active,
    }
    return Observed(inputs, CronJobStatus(job_id=live.job_id))


# --- render: the calls to pg_cron --------------------------------------------------------------------


def schedule_statement(spec: CronJobSpec) -> Statement:
    return sql.SQL(
        "SELECT cron.schedule_in_database(job_name => {}, schedule => {}, command => {}, database => {}, active => {})"
    ).format(
        sql.Literal(spec.name),
        sql.Literal(spec.schedule),
        sql.Literal(spec.command),
        sql.Literal(spec.database),
        sql.Literal(spec.active),
    )


def alter_statement(job_id: int, spec: CronJobSpec) -> Statement:
    return sql.SQL(
        "SELECT cron.alter_job(job_id => {}, schedule => {}, command => {}, database => {}, active => {})"
    ).format(
        sql.Literal(job_id),
        sql.Literal(spec.schedule),
        sql.Literal(spec.command),
        sql.Literal(spec.database),
        sql.Literal(spec.active),
    )


def job_operations(spec: CronJobSpec, live: LiveJob | None) -> list[Operation]:
    """Alter the job of that name in place (its run history stays attached), or schedule it anew."""
    return shared([schedule_statement(spec) if live is None else alter_statement(live.job_id, spec)])


class CronJobKind(DatabaseKind[CronJobSpec, CronJobStatus]):
    token = TOKEN
    spec_type = CronJobSpec
    status_type = CronJobStatus

    def observe(
        self, resource_id: str, spec: CronJobSpec, recorded: CronJobStatus | None = None
    ) -> Observed[CronJobStatus] | None:
        with connect(self.target) as conn:
            live = read_job(conn, spec.name)
            return None if live is None else observed(live, spec)

    def create(self, spec: CronJobSpec) -> tuple[str, CronJobStatus]:
        with connect(self.target) as conn:
            existed = read_job(conn, spec.name) is not None
            job_id = self.converge(conn, spec)
        return spec.name, CronJobStatus(job_id=job_id, adopted=existed)

    def update(self, resource_id: str, old: dict[str, Any], spec: CronJobSpec) -> CronJobStatus:
        with connect(self.target) as conn:
            return CronJobStatus(job_id=self.converge(conn, spec))

    def converge(self, conn: psycopg.Connection, spec: CronJobSpec) -> int:
        self.apply(conn, job_operations(spec, read_job(conn, spec.name)), what=f"cron job {spec.name}")
        after = read_job(conn, spec.name)
        assert after is not None
        return after.job_id

    def delete(self, resource_id: str, spec: CronJobSpec, recorded: CronJobStatus | None = None) -> None:
        with connect(self.target) as conn:
            live = read_job(conn, spec.name)
            if live is None:
                return
            unschedule = sql.SQL("SELECT cron.unschedule({})").format(sql.Literal(live.job_id))
            self.apply(conn, shared([unschedule]), what=f"unschedule cron job {spec.name}")
