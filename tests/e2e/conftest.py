"""The e2e tests' stacks: a module's own stack with replicas, and one shared database stack (testbed/stacks.py)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pulumi.automation as auto
import pytest
from psycopg import sql

from testbed.before_state import BeforeTable
from testbed.stacks import LiveStack, throwaway_stack
from testbed.support import copy_project_without_tables
from tests.ddl_log import LOG_SETTINGS


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """A stack with two replicas, for the module to bring up itself."""
    with throwaway_stack(tmp_path_factory.mktemp("backend"), "e2e", replicas=2) as live:
        yield live


@pytest.fixture(scope="session")
def database_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """A stack without replicas for the tests of what is inside the database, shared by their modules:
    up before the first, destroyed after the last."""
    with throwaway_stack(tmp_path_factory.mktemp("backend"), "e2e-db") as live:
        assert live.stack.up().summary.result == "succeeded"
        yield live


#: What the adopted database's application reads of the writer's company, and checks it sees whole.
READ_TABLES = ("customers", "jobs")


@dataclass
class Known:
    """The rows of the writer's company the application knows are committed, by table (shared by threads)."""

    ids: dict[str, set[uuid.UUID]]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, table: str, row_id: uuid.UUID) -> None:
        with self.lock:
            self.ids[table].add(row_id)

    def now(self) -> dict[str, set[uuid.UUID]]:
        with self.lock:
            return {table: set(ids) for table, ids in self.ids.items()}


@dataclass
class Adoption:
    """The review's populated database on a stack of a copy of the program (allowDataLoss false), whose
    server logs every statement (tests/ddl_log.py): adopted by test_adopt_existing_database, then changed
    by one pull request's worth of every change kind by test_schema_evolution."""

    live: LiveStack
    project: Path
    tables: list[BeforeTable] = field(default_factory=list)
    oids: dict[str, int] = field(default_factory=dict)
    fingerprints: dict[str, tuple[int, str]] = field(default_factory=dict)
    writer_ids: dict[str, list[uuid.UUID]] = field(default_factory=dict)
    adopted: bool = False
    known: Known = field(default_factory=lambda: Known({table: set() for table in READ_TABLES}))

    @property
    def stack(self) -> auto.Stack:
        return self.live.stack

    @property
    def schema_dir(self) -> Path:
        return self.project / "sql" / "schema"

    def connect(self) -> psycopg.Connection[Any]:
        conninfo: dict[str, Any] = self.live.admin()
        return psycopg.connect(**conninfo, autocommit=True)

    def table(self, name: str) -> BeforeTable:
        return next(table for table in self.tables if table.name == name)


@pytest.fixture(scope="session")
def adoption(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Adoption]:
    project = copy_project_without_tables(tmp_path_factory.mktemp("adoption") / "project")
    backend = project.parent / "backend"
    backend.mkdir()
    adopted: list[Adoption] = []

    def before_destroy(stack: auto.Stack) -> None:
        allow_data_loss(stack)  # the up it takes converges the tables first: it needs them all there
        for adoption in adopted:
            drop_adopted_tables(adoption)

    with throwaway_stack(
        backend, "adopt", work_dir=project, before_destroy=before_destroy, settings=LOG_SETTINGS
    ) as live:
        live.stack.set_config("thorbis:allowDataLoss", auto.ConfigValue("false"))
        adopted.append(Adoption(live, project))
        yield adopted[0]


def drop_adopted_tables(adoption: Adoption) -> None:
    """The tables that were there before the stack are adopted, and a destroy leaves them (with the columns
    the stack added, so the extensions those use stay too): the test drops them, as their owner would, after
    the last up and before the destroy."""
    with adoption.connect() as conn:
        for table in adoption.tables:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier("public", table.name)))


def allow_data_loss(stack: auto.Stack) -> None:
    """Data loss is not allowed on this stack (its DestroyGuard refuses a destroy): allow it before the destroy."""
    stack.set_config("thorbis:allowDataLoss", auto.ConfigValue("true"))
    stack.up()  # the provider learns it
