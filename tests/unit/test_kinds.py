"""How kinds are declared, registered and served: one Spec per kind (markers for replace and secret), one
generic resource registered from it, an explicit registry the plugin serves without importing the program,
typed statuses whose Expect-ed fields are the drift, and plans of typed operations."""

from __future__ import annotations

import asyncio
import importlib
import json
import pkgutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pulumi
import pytest
import yaml
from psycopg import sql
from pulumi.runtime.mocks import MockCallArgs, MockResourceArgs
from pulumi.runtime.rpc import is_rpc_secret, unwrap_rpc_secret

import components
from components import registry
from components.connection import ConnectionSpec, Endpoint
from components.database import ddl
from components.database.ddl import Operation, Transaction
from components.database.declared.model import load_schema
from components.database.declared.search import SEARCH_FILE, SearchModel
from components.database.kinds.index import IndexKind, IndexSpec
from components.database.kinds.partition_guard import PartitionGuardStatus
from components.database.kinds.role import RoleKind, RoleSpec
from components.database.kinds.row_security import RowSecurityStatus
from components.database.kinds.table import TableKind, TableStatus
from components.database.layer import DatabaseLayer
from components.database.session import Timeouts
from components.kind import SECRET, Kind, marked
from components.platform.build import build_platform
from components.resource import declare
from config import StackSettings, parse_settings
from tests.conftest import ROOT
from tests.unit.mocks import record

#: What the plugin must not import when it starts: the program, its config, the docker platform.
PROGRAM = ("config", "pulumi_docker", "components.database.layer", "components.resource", "components.platform.build")
run_with_mocks: Callable[[Callable[[], Any]], Callable[[], None]] = pulumi.runtime.test


def test_every_kind_under_components_is_in_the_registry() -> None:
    for module in pkgutil.walk_packages(components.__path__, prefix="components."):
        importlib.import_module(module.name)
    found: set[str] = set()
    pending: list[type] = list(Kind.__subclasses__())
    while pending:
        kind = pending.pop()
        pending += kind.__subclasses__()
        if "token" in vars(kind):
            found.add(f"{kind.__module__}.{kind.__qualname__}")
    assert found == {f"{kind.__module__}.{kind.__qualname__}" for kind in registry.KINDS}
    assert len(registry.served_kinds()) == len(registry.KINDS)


def test_the_plugin_starts_without_importing_the_program() -> None:
    probe = "import json, sys, components.provider; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], cwd=ROOT, check=True, capture_output=True).stdout)
    program = [name for name in loaded if name in PROGRAM or name.startswith(tuple(f"{p}." for p in PROGRAM))]
    program += [name for name in loaded if name.startswith("components.platform.") and name.endswith(".platform")]
    assert program == []
    assert {kind.__module__ for kind in registry.KINDS} <= set(loaded)


# --- the generic resource ------------------------------------------------------------------------------


class Recorder(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.registered: dict[str, tuple[str, dict[str, Any]]] = {}

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[Any, Any]]:
        self.registered[args.name] = (args.typ, dict(args.inputs))
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        raise AssertionError(f"no provider function is called, yet {args.token} was")


def registered(program: Callable[[], None]) -> dict[str, tuple[str, dict[str, Any]]]:
    recorder = Recorder()
    asyncio.set_event_loop(asyncio.new_event_loop())
    pulumi.runtime.set_mocks(recorder, project="thorbis-db", stack="unit", preview=False)
    run_with_mocks(program)()
    return recorder.registered


def test_a_resource_is_registered_from_its_spec_with_secrets_wrapped_and_no_status() -> None:
    index = IndexSpec(schema_name="public", table="jobs", name="jobs_keys_idx", keys=["company_id"])

    def program() -> None:
        declare(RoleKind, "role-plain", RoleSpec(name="plain", login=True))
        declare(RoleKind, "role-login", {"name": "login", "login": True, "password": pulumi.Output.from_input("pw")})
        declare(IndexKind, "index-keys", index)  # a field named `keys`: a spec is not read as a mapping

    made = registered(program)
    assert made["index-keys"] == ("thorbisdb:db:Index", index.model_dump(by_alias=True, exclude={"where"}))
    token, plain = made["role-plain"]
    assert token == "thorbisdb:db:Role"
    assert plain == {**RoleSpec(name="plain", login=True).model_dump(by_alias=True, exclude={"password"})}
    _, login = made["role-login"]
    assert set(login) == {"name", "login", "password"}  # what it was given; check() fills the defaults
    assert is_rpc_secret(login["password"]) and unwrap_rpc_secret(login["password"]) == "pw"
    assert "adopted" not in login and "passwordMatches" not in login  # outputs are not inputs


def test_an_input_the_spec_does_not_have_is_refused_when_the_program_runs() -> None:
    with pytest.raises(TypeError, match=r"thorbisdb:db:Role has no input loginn; its inputs \(RoleSpec\): name, "):
        declare(RoleKind, "role-typo", {"name": "x", "loginn": True})
    with pytest.raises(ValueError, match=r"thorbisdb:db:Role: .*connection_limit"):
        declare(RoleKind, "role-bad", {"name": "x", "connection_limit": -5})


# --- status and drift ----------------------------------------------------------------------------------


def test_drift_is_a_status_field_that_is_not_as_expected_and_unknown_is_not_drift() -> None:
    drifted = RowSecurityStatus(
        enabled=False, undeclared_policies=["leak: PERMISSIVE FOR SELECT TO public USING (true)"]
    )
    assert drifted.drift() == ["enabled", "undeclaredPolicies"]
    assert RowSecurityStatus(enabled=True, undeclared_policies=[]).drift() == []
    assert TableStatus(not_validated=["fk"]).drift() == ["notValidated"]
    assert TableStatus().drift() == []  # a state recorded before the field existed
    assert PartitionGuardStatus(unsecured_partitions=2).drift() == ["unsecuredPartitions"]
    assert TableStatus(adopted=True).wire() == {"adopted": True}  # only what a step set is recorded


# --- plans as typed operations -------------------------------------------------------------------------


def test_a_plan_runs_shared_operations_together_and_the_others_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[tuple[list[str], bool, bool]] = []

    def run_ddl(conn: Any, statements: list[sql.Composable], timeouts: Timeouts, **options: Any) -> None:
        if statements:
            texts = [statement.as_string(None) for statement in statements]
            runs.append((texts, options.get("transactional", True), options.get("before_retry") is not None))

    monkeypatch.setattr(ddl, "run_ddl", run_ddl)
    conn: psycopg.Connection[Any] = None  # type: ignore[assignment]  # the recorder never uses it
    plan = [
        Operation(sql.SQL("ALTER TABLE t ADD COLUMN c int")),
        Operation(sql.SQL("ALTER TABLE t ADD CONSTRAINT k CHECK (c > 0) NOT VALID")),
        Operation(sql.SQL("ALTER TABLE t VALIDATE CONSTRAINT k"), Transaction.OWN),
        Operation(sql.SQL("CREATE INDEX CONCURRENTLY i ON t (c)"), Transaction.NONE, cleanup=sql.SQL("DROP INDEX i")),
        Operation(sql.SQL("COMMENT ON TABLE t IS 'x'")),
    ]
    ddl.apply(conn, plan, Timeouts(), "table t")
    assert runs == [
        (["ALTER TABLE t ADD COLUMN c int", "ALTER TABLE t ADD CONSTRAINT k CHECK (c > 0) NOT VALID"], True, False),
        (["ALTER TABLE t VALIDATE CONSTRAINT k"], True, False),
        (["CREATE INDEX CONCURRENTLY i ON t (c)"], False, True),
        (["COMMENT ON TABLE t IS 'x'"], True, False),
    ]
    assert ddl.render(plan[:1]) == ["ALTER TABLE t ADD COLUMN c int"]


# --- the database layer, registered under mocks ---------------------------------------------------------


def layer_settings() -> StackSettings:
    """A stack on the external platform (no host ports are checked), its two role passwords as secrets."""
    values = {
        "thorbis:platform": "external",
        "thorbis:externalDsn": "postgresql://postgres:pw@db.example:5432/postgres",
        "thorbis:authenticatorPassword": "Authenticator-Secret-0123456789",
        "thorbis:reportingPassword": "Reporting-Secret-0123456789",
    }
    secret = {"thorbis:externalDsn", "thorbis:authenticatorPassword", "thorbis:reportingPassword"}
    return parse_settings("unit", values, secret, ROOT)


def layer_connection() -> ConnectionSpec:
    return ConnectionSpec(
        platform="external",
        primary=Endpoint(host="db.example", port=5432),
        database="thorbis",
        admin_user="postgres",
        admin_password="pw",
    )


def test_every_object_the_layer_declares_is_a_valid_spec_of_its_kind() -> None:
    connection = layer_connection()

    def program() -> None:
        DatabaseLayer("thorbis", pulumi.Output.secret(connection), layer_settings()).guard_destroy()

    made = registered(program)
    schema = load_schema()
    database_kinds = {kind.token for kind in registry.KINDS if kind.token.startswith("thorbisdb:db:")}
    component_and_provider = {"thorbis:database:Layer", "pulumi:providers:thorbisdb"}
    assert {typ for typ, _ in made.values()} - component_and_provider == database_kinds
    for name, (typ, inputs) in made.items():
        kind = registry.kind_of(typ)
        if kind is None:
            continue
        plain = {key: unwrap_rpc_secret(value) for key, value in inputs.items()}
        kind.spec_type.model_validate(plain)  # what the provider's check does: no ValidationError
        assert all(is_rpc_secret(inputs[key]) for key in marked(kind.spec_type, SECRET) if key in inputs), name
    tables = [name for name, (typ, _) in made.items() if typ == "thorbisdb:db:Table"]
    policies = [name for name, (typ, _) in made.items() if typ == "thorbisdb:db:Policy"]
    assert sorted(tables) == sorted(f"table-{table.name}" for table in schema.tables)
    assert len(policies) == 5 * len(schema.tables)  # four tenant policies and the read_all one


def test_a_destroy_asks_the_destroy_guard_before_anything_else_of_the_stack() -> None:
    """A destroy deletes what depends on others first: the guard depends on every other resource of the
    program (the platform's servers too), so none is deleted before the guard has allowed it."""

    def program() -> pulumi.Output[None]:
        settings = layer_settings()
        platform = build_platform("thorbis", settings)
        DatabaseLayer("thorbis", platform.database_connection, settings).guard_destroy(platform)
        return pulumi.Output.from_input(None)

    created, wiring = record(program, "unit")
    guard = wiring["destroy-guard"]
    custom = {wiring[item.name].urn for item in created if item.type.startswith("thorbisdb:")} - {guard.urn}
    assert any("thorbisdb:external:Postgres" in urn for urn in custom)  # the platform's servers too
    assert len(custom) > 500
    assert custom - guard.dependencies == set()


def test_the_partition_guard_runs_after_the_function_it_calls_even_with_no_table(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A stack with an empty sql/schema (the adoption e2e's "before" stack) has no table to order it by."""
    monkeypatch.setattr("components.database.layer.load_schema", lambda: load_schema(tmp_path))
    no_searches = SearchModel.model_validate({**yaml.safe_load(SEARCH_FILE.read_text()), "searches": []})
    monkeypatch.setattr("components.database.layer.load_searches", lambda schema: no_searches)

    def program() -> pulumi.Output[None]:
        DatabaseLayer("thorbis", pulumi.Output.secret(layer_connection()), layer_settings())
        return pulumi.Output.from_input(None)

    _, wiring = record(program, "unit")
    name_of = {wired.urn: name for name, wired in wiring.items()}
    after, waiting = set[str](), ["partition-guard"]
    while waiting:
        for urn in wiring[waiting.pop()].dependencies - after:
            after.add(urn)
            waiting.append(name_of[urn])
    assert "function-app-secure_partitions" in {name_of[urn] for urn in after}


def test_a_new_tables_create_takes_every_table_its_foreign_keys_point_at_up_front() -> None:
    """Otherwise its transaction has a snapshot before it waits for them, and a CONCURRENTLY build on one of
    them waits for that snapshot while it waits for the build: a deadlock (every declared table)."""
    pointing = 0
    for data in load_schema().tables:
        spec = data.table_spec("thorbis_owner")
        locked = {(lock.schema, lock.table) for op in TableKind().planned_create(spec) or [] for lock in op.locks}
        pointed = {(fk.ref_schema, fk.ref_table) for fk in spec.foreign_keys} - {(spec.schema_name, spec.name)}
        assert pointed <= locked, spec.name
        pointing += bool(pointed)
    assert pointing > 10
