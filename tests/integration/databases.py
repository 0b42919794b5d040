"""A real server's database as the database layer's kinds see it, for the integration tests of those kinds."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from components.connection import ConnectionSpec, Endpoint
from components.kind import Kind, Observed, Spec, Status, reported
from components.platform.local.postgres import PostgresServerKind, PostgresServerSpec
from components.platform.local.postgres_files import SUPERUSER
from components.provider import spec_fields
from testbed.support import free_port, reachable_state_dir

KindT = TypeVar("KindT", bound=Kind[Any, Any])
Query = str | sql.Composable


@dataclass(frozen=True)
class Database:
    """The test server's application database, as the database layer's provider config names it."""

    connection: ConnectionSpec

    def kind(self, kind_type: type[KindT], lock_timeout: str = "5s") -> KindT:
        kind = kind_type()
        kind.provider_config = {
            "connection": self.connection.model_dump(mode="json"),
            "lockTimeout": lock_timeout,
            "allowDataLoss": False,
        }
        return kind

    def connect(self, user: str | None = None, password: str | None = None, **options: Any) -> psycopg.Connection:
        """Autocommit, as the admin role unless another login is given."""
        login = {"user": user, "password": password} if user else {}
        return psycopg.connect(**{**self.connection.conninfo(), **login, **options}, autocommit=True)

    def execute(self, statement: Query, params: tuple[Any, ...] | None = None) -> None:
        with self.connect() as conn:
            conn.execute(statement, params or None)  # type: ignore[arg-type]

    def scalar(self, query: Query, params: tuple[Any, ...] | None = None) -> Any:
        with self.connect() as conn:
            row = conn.execute(query, params or None).fetchone()  # type: ignore[arg-type]
        assert row is not None, query
        return row[0]

    def rows(self, query: Query, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            return conn.execute(query, params or None).fetchall()  # type: ignore[arg-type]

    def dicts(self, query: Query, params: tuple[Any, ...] | None = None) -> list[dict[str, Any]]:
        with self.connect() as conn, conn.cursor(row_factory=dict_row) as cursor:
            return cursor.execute(query, params or None).fetchall()  # type: ignore[arg-type]


def local_connection(port: int, database: str, password: str) -> ConnectionSpec:
    return ConnectionSpec(
        platform="local",
        primary=Endpoint.loopback(port),
        database=database,
        admin_user=SUPERUSER,
        admin_password=password,
        sslmode="disable",
    )


@contextmanager
def database_server(database: str, password: str, **settings: Any) -> Iterator[Database]:
    """A PostgreSQL server of its own (made and removed through its kind) and its database."""
    with reachable_state_dir() as base:
        spec = PostgresServerSpec(
            state_dir=str(base / "postgres"),
            port=free_port(),
            database=database,
            superuser_password=password,
            replication_password=password,
            **settings,
        )
        server = PostgresServerKind()
        resource_id, _ = server.create(spec)
        try:
            yield Database(local_connection(spec.port, database, password))
        finally:
            server.delete(resource_id, spec.model_copy(update={"allow_data_loss": True}))


def declared(spec: Spec, **outputs: Any) -> dict[str, Any]:
    """The inputs check() records for a spec, plus outputs a kind reports."""
    return {**spec.model_dump(by_alias=True, mode="json"), **outputs}


def recorded(spec: Spec, *steps: Status | Observed[Any] | None) -> dict[str, Any]:
    """What Pulumi keeps for an object: the inputs check() recorded, then what each step reported (a
    create's or update's status, a refresh's observation), the latest last."""
    state = declared(spec)
    for step in steps:
        state.update(reported(step) if step is not None else {})
    return state


def changes(kind: Kind[Any, Any], spec: Spec, observed: Observed[Any] | None) -> list[str]:
    """What the provider's diff would report after a refresh that observed `observed`."""
    assert observed is not None, "the object is gone"
    inputs = declared(spec)
    state = recorded(spec, observed)
    changed = [key for key in spec_fields(kind) if state.get(key) != inputs.get(key)]
    return changed + [key for key in kind.drifted(kind.status_of(state), spec) if key not in changed]
