"""Real servers for the integration tests: made and removed through their own Kinds, on free ports, in
directories the `postgres` OS user can reach (never the dev stack's ports or state)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from components.connection import LOOPBACK
from components.kind import Observed, Status, reported
from components.platform.local import postgres_files as pg
from components.platform.local.pgbouncer import PgBouncerSpec
from components.platform.local.postgres import PostgresServerKind, PostgresServerSpec
from components.platform.local.replica import PostgresReplicaKind, PostgresReplicaSpec
from testbed.support import free_port, reachable_state_dir

SUPERUSER_PASSWORD = "it-Super'user:0123"  # a quote and a colon: quoting and .pgpass escaping are exercised
REPLICATION_PASSWORD = "it-Replic:ation\\0123"
DATABASE = "thorbis_it"
#: What components.platform.local.postgres_settings gives a dev stack, small enough for a test host.
SETTINGS = {
    "shared_preload_libraries": "pg_cron,pg_stat_statements",
    "cron.database_name": DATABASE,
    "cron.use_background_workers": "on",
    "max_worker_processes": "16",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "hot_standby": "on",
    "password_encryption": "scram-sha-256",
    "max_connections": "100",
    "shared_buffers": "128MB",
    "work_mem": "4MB",
    "maintenance_work_mem": "64MB",
}


def flat(result: Status | Observed[Any] | None) -> dict[str, Any] | None:
    """A kind's result as the provider records it: inputs and status under their wire names."""
    return None if result is None else reported(result)


def eventually(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll until `condition` holds; fail the test saying what never happened."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.05)


def primary_spec(state_dir: Path, port: int, **changes: Any) -> PostgresServerSpec:
    spec = PostgresServerSpec(
        state_dir=str(state_dir),
        port=port,
        database=DATABASE,
        superuser_password=SUPERUSER_PASSWORD,
        replication_password=REPLICATION_PASSWORD,
        settings=SETTINGS,
    )
    return spec.model_copy(update=changes)


@dataclass(frozen=True)
class Primary:
    """A running primary made by PostgresServerKind.create, with what the engine would have recorded."""

    kind: PostgresServerKind
    spec: PostgresServerSpec
    resource_id: str
    outputs: dict[str, Any]

    @property
    def base(self) -> Path:
        return Path(self.spec.state_dir)

    @property
    def server(self) -> pg.ServerDir:
        return pg.ServerDir(self.base)

    @property
    def port(self) -> int:
        return self.spec.port

    @property
    def dsn(self) -> str:
        """A postgresql:// URL, the form thorbis:externalDsn takes."""
        return f"postgresql://postgres:{quote(SUPERUSER_PASSWORD, safe='')}@{LOOPBACK}:{self.port}/{DATABASE}"

    def state(self, observed: dict[str, Any] | None = None) -> dict[str, Any]:
        """The state Pulumi keeps: inputs, then outputs (those of a refresh when given)."""
        return {**self.spec.model_dump(by_alias=True), **self.outputs, **(observed or {})}

    def connect(self, dbname: str = DATABASE) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(
            host=LOOPBACK,
            port=self.port,
            user="postgres",
            password=SUPERUSER_PASSWORD,
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        )

    def scalar(self, query: str, params: tuple[Any, ...] = (), dbname: str = DATABASE) -> Any:
        with self.connect(dbname) as conn:
            row = conn.execute(query, params).fetchone()
        assert row is not None, query
        return row[0]


@contextmanager
def running_primary() -> Iterator[Primary]:
    """A new primary; removed with allow_data_loss whatever the test did to it."""
    with reachable_state_dir() as base:
        spec = primary_spec(base / "postgres-primary", free_port())
        kind = PostgresServerKind()
        resource_id, outputs = kind.create(spec)
        try:
            yield Primary(kind, spec, resource_id, reported(outputs))
        finally:
            kind.delete(resource_id, spec.model_copy(update={"allow_data_loss": True}))


def pgbouncer_spec(primary: Primary, state_dir: Path, auth_password: str, **changes: Any) -> PgBouncerSpec:
    """PgBouncer in front of `primary` on a free port, its files under `state_dir`."""
    spec = PgBouncerSpec(
        state_dir=str(state_dir),
        port=free_port(),
        primary_port=primary.port,
        primary_socket_dir=str(primary.server.socket_dir),
        database=DATABASE,
        superuser_password=SUPERUSER_PASSWORD,
        auth_password=auth_password,
    )
    return spec.model_copy(update=changes)


@dataclass(frozen=True)
class Replica:
    kind: PostgresReplicaKind
    spec: PostgresReplicaSpec
    resource_id: str
    outputs: dict[str, Any]

    @property
    def base(self) -> Path:
        return Path(self.spec.state_dir)

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        return pg.connect(self.spec.port, SUPERUSER_PASSWORD, dbname=DATABASE)


@contextmanager
def running_replica(primary: Primary) -> Iterator[Replica]:
    """A streaming replica of `primary` through a slot of its own, removed afterwards."""
    with reachable_state_dir() as base:
        spec = PostgresReplicaSpec(
            state_dir=str(base / "postgres-replica"),
            port=free_port(),
            primary_port=primary.port,
            slot_name=f"it_replica_{uuid.uuid4().hex[:8]}",
            superuser_password=SUPERUSER_PASSWORD,
            replication_password=REPLICATION_PASSWORD,
            settings=SETTINGS,
        )
        kind = PostgresReplicaKind()
        resource_id, outputs = kind.create(spec)
        try:
            yield Replica(kind, spec, resource_id, reported(outputs))
        finally:
            kind.delete(resource_id, spec)


@pytest.fixture(scope="module")
def primary() -> Iterator[Primary]:
    """A primary shared by a module's tests, which must leave its settings and process as they found them."""
    with running_primary() as server:
        yield server


@pytest.fixture
def own_primary() -> Iterator[Primary]:
    """A primary of one test's own, for tests that restart, kill, reconfigure or delete it."""
    with running_primary() as server:
        yield server
