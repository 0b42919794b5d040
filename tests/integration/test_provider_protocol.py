"""ThorbisProvider as the engine drives it: check / diff / create / read / update / delete requests, on real
servers where the request does real work."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pulumi.provider.experimental.property_value import PropertyValue
from pulumi.provider.experimental.provider import (
    CheckRequest,
    CreateRequest,
    DeleteRequest,
    DiffRequest,
    PropertyDiffKind,
    ReadRequest,
    UpdateRequest,
)

from components.kind import Kind, ProviderError
from components.platform.external.postgres import ExternalPostgresKind
from components.platform.local import postgres, redis
from components.platform.local.pgbouncer import PgBouncerKind
from components.platform.local.postgres import PostgresServerKind
from components.platform.local.redis import RedisKind
from components.platform.local.replica import PostgresReplicaKind
from components.provider import DECLARED, ThorbisProvider, plain, property_value
from testbed.support import free_port, processes_under, reachable_state_dir
from tests.integration.conftest import DATABASE, REPLICATION_PASSWORD, SETTINGS, SUPERUSER_PASSWORD

T = TypeVar("T")
SERVER = postgres.TOKEN
REDIS = redis.TOKEN


def run(request: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(request)


def urn(token: str, name: str = "it") -> str:
    """A URN as the engine sends it, the type carrying its parent component's type before `$`."""
    return f"urn:pulumi:it::thorbis-db::thorbis:platform:Local${token}::{name}"


def wire(values: Mapping[str, Any], secrets: frozenset[str] = frozenset()) -> dict[str, PropertyValue]:
    return {key: property_value(value, key in secrets) for key, value in values.items()}


def secret_keys(properties: Mapping[str, PropertyValue] | None) -> set[str]:
    assert properties is not None
    return {key for key, value in properties.items() if value.is_secret}


def server_inputs(state_dir: Path, port: int, **changes: Any) -> dict[str, Any]:
    return {
        "stateDir": str(state_dir),
        "port": port,
        "database": DATABASE,
        "superuserPassword": SUPERUSER_PASSWORD,
        "replicationPassword": REPLICATION_PASSWORD,
        "settings": SETTINGS,
        "allowDataLoss": False,
        **changes,
    }


@pytest.fixture(scope="module")
def provider() -> ThorbisProvider:
    """The plugin's provider over the platform kinds (main() serves the registry's kinds, these among them)."""
    kinds: list[Kind[Any, Any]] = [
        PostgresServerKind(),
        PostgresReplicaKind(),
        PgBouncerKind(),
        RedisKind(),
        ExternalPostgresKind(),
    ]
    return ThorbisProvider({kind.token: kind for kind in kinds})


# --- check ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"port": 80}, "port"),
        ({"port": 70000}, "port"),
        ({"superuserPassword": ""}, "superuserPassword"),
        ({"sharedBuffers": "1GB"}, "sharedBuffers"),  # a setting put beside `settings` by mistake
    ],
)
def test_check_names_the_bad_property(provider: ThorbisProvider, changes: dict[str, Any], named: str) -> None:
    inputs = {**server_inputs(Path("/nonexistent"), 55999), **changes}
    checked = run(provider.check(CheckRequest(urn(SERVER), {}, wire(inputs), b"")))
    assert [failure.property for failure in checked.failures or []] == [named]
    assert checked.inputs is None


def test_check_fills_defaults_and_marks_secrets(provider: ThorbisProvider) -> None:
    inputs = server_inputs(Path("/nonexistent"), 55999)
    del inputs["allowDataLoss"], inputs["settings"]
    checked = run(provider.check(CheckRequest(urn(SERVER), {}, wire(inputs), b"")))
    assert not checked.failures
    assert checked.inputs is not None
    assert plain(checked.inputs["allowDataLoss"]) is False
    assert plain(checked.inputs["settings"]) == {}
    assert plain(checked.inputs["port"]) == 55999
    assert secret_keys(checked.inputs) == {"superuserPassword", "replicationPassword"}


def test_an_unknown_type_is_an_error_listing_the_known_ones(provider: ThorbisProvider) -> None:
    with pytest.raises(ProviderError, match=r"no resource type thorbisdb:local:Nope; known: .*thorbisdb:local:Redis"):
        run(provider.check(CheckRequest(urn("thorbisdb:local:Nope"), {}, {}, b"")))


# --- diff -----------------------------------------------------------------------------------------------


def diff(provider: ThorbisProvider, old_state: dict[str, Any], new_inputs: dict[str, Any], ignore: list[str]) -> Any:
    return run(provider.diff(DiffRequest(urn(SERVER), "id", wire(old_state), wire(new_inputs), ignore)))


RECORDED = {**server_inputs(Path("/srv/a"), 55999), "running": True, "serverVersion": "15.18", "dataChecksums": True}


def test_diff_reports_an_in_place_change(provider: ThorbisProvider) -> None:
    new = server_inputs(Path("/srv/a"), 55999, settings={**SETTINGS, "work_mem": "8MB"})
    found = diff(provider, RECORDED, new, [])
    assert (found.changes, found.diffs, found.replaces) == (True, ["settings"], [])
    assert found.detailed_diff is not None
    assert found.detailed_diff["settings"].kind == PropertyDiffKind.UPDATE


def test_diff_marks_replace_on_properties_as_replacements(provider: ThorbisProvider) -> None:
    new = server_inputs(Path("/srv/b"), 55998)
    found = diff(provider, RECORDED, new, [])
    assert found.changes is True
    assert sorted(found.diffs or []) == ["port", "stateDir"]
    assert found.replaces == ["stateDir"]
    assert found.detailed_diff is not None
    assert found.detailed_diff["stateDir"].kind == PropertyDiffKind.UPDATE_REPLACE
    assert found.detailed_diff["port"].kind == PropertyDiffKind.UPDATE
    assert found.delete_before_replace is True


def test_diff_sees_no_change_when_inputs_match_or_are_ignored(provider: ThorbisProvider) -> None:
    assert diff(provider, RECORDED, server_inputs(Path("/srv/a"), 55999), []).changes is False
    new = server_inputs(Path("/srv/a"), 55999, settings={**SETTINGS, "work_mem": "8MB"})
    assert diff(provider, RECORDED, new, ["settings"]).changes is False


def test_diff_reports_a_stopped_server_as_a_change(provider: ThorbisProvider) -> None:
    found = diff(provider, {**RECORDED, "running": False}, server_inputs(Path("/srv/a"), 55999), [])
    assert (found.changes, found.diffs, found.replaces) == (True, ["running"], [])


# --- create / read / update / delete on real servers ------------------------------------------------------


@pytest.fixture
def state_dir() -> Iterator[Path]:
    with reachable_state_dir() as base:
        yield base / "postgres-primary"


def test_preview_create_starts_nothing(provider: ThorbisProvider, state_dir: Path) -> None:
    inputs = wire(server_inputs(state_dir, free_port()), PostgresServerKind().secret_properties)
    previewed = run(provider.create(CreateRequest(urn(SERVER), inputs, 120, preview=True)))
    assert previewed.resource_id is None
    assert previewed.properties == inputs
    assert not state_dir.exists()


def test_postgres_server_through_the_provider_keeps_its_secrets_secret(
    provider: ThorbisProvider, state_dir: Path
) -> None:
    # the declared inputs are kept beside the observed state, and hold the passwords: secret too
    port, secrets = free_port(), {"superuserPassword", "replicationPassword", DECLARED}
    inputs = server_inputs(state_dir, port)
    checked = run(provider.check(CheckRequest(urn(SERVER), {}, wire(inputs), b""))).inputs
    assert checked is not None
    created = run(provider.create(CreateRequest(urn(SERVER), checked, 120, preview=False)))
    resource_id = created.resource_id
    assert resource_id == str(state_dir / "data")
    try:
        assert created.properties is not None
        assert secret_keys(created.properties) == secrets
        assert plain(created.properties["running"]) is True
        assert plain(created.properties["dataChecksums"]) is True

        read = run(provider.read(ReadRequest(urn(SERVER), resource_id, created.properties, checked)))
        assert read.resource_id == resource_id
        assert secret_keys(read.properties) == secrets
        assert read.properties is not None
        assert plain(read.properties["superuserPassword"]) == SUPERUSER_PASSWORD

        with pytest.raises(ProviderError, match="allowDataLoss"):
            run(provider.delete(DeleteRequest(urn(SERVER), resource_id, read.properties, 120)))
        assert processes_under(state_dir), "a refused delete stopped the server"

        news = wire(
            {**inputs, "allowDataLoss": True, "settings": {**SETTINGS, "work_mem": "8MB"}},
            PostgresServerKind().secret_properties,
        )
        found = run(provider.diff(DiffRequest(urn(SERVER), resource_id, read.properties, news, [])))
        assert sorted(found.diffs or []) == ["allowDataLoss", "settings"]
        assert found.replaces == []
        updated = run(provider.update(UpdateRequest(urn(SERVER), resource_id, read.properties, news, 120, [], False)))
        assert updated.properties is not None
        assert secret_keys(updated.properties) == secrets
        assert plain(updated.properties["settings"])["work_mem"] == "8MB"

        run(provider.delete(DeleteRequest(urn(SERVER), resource_id, updated.properties, 120)))
        assert processes_under(state_dir) == []
        gone = run(provider.read(ReadRequest(urn(SERVER), resource_id, updated.properties, news)))
        assert gone.resource_id is None, "a deleted server is still read as existing"
        assert not gone.properties
    finally:
        spec = PostgresServerKind().parse({**inputs, "allowDataLoss": True})
        PostgresServerKind().delete(resource_id, spec)


def test_redis_through_the_provider_keeps_its_password_secret(provider: ThorbisProvider, state_dir: Path) -> None:
    inputs = wire(
        {"stateDir": str(state_dir), "port": free_port(), "password": "it-Redis-0123"}, RedisKind().secret_properties
    )
    checked = run(provider.check(CheckRequest(urn(REDIS), {}, inputs, b""))).inputs
    assert checked is not None
    created = run(provider.create(CreateRequest(urn(REDIS), checked, 60, preview=False)))
    assert created.resource_id is not None and created.properties is not None
    try:
        assert secret_keys(created.properties) == {"password", DECLARED}
        read = run(provider.read(ReadRequest(urn(REDIS), created.resource_id, created.properties, checked)))
        assert secret_keys(read.properties) == {"password", DECLARED}
    finally:
        run(provider.delete(DeleteRequest(urn(REDIS), created.resource_id, created.properties, 60)))
    assert not state_dir.exists()


def test_read_without_state_refuses_an_import(provider: ThorbisProvider) -> None:
    with pytest.raises(ProviderError, match="cannot be imported"):
        run(provider.read(ReadRequest(urn(SERVER), "/somewhere/data", {}, {})))
