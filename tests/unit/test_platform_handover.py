"""What a platform hands the database layer, under Pulumi's mocks: the layer decides from the ConnectionSpec
alone (never from the platform's name), and the external platform checks every extension the layer installs."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pytest

from components.connection import ConnectionSpec, Endpoint
from components.database.declared.access import load_access
from components.database.layer import DatabaseLayer
from components.platform.external.platform import ExternalPlatform
from config import PASSWORD_KEYS, StackSettings, parse_settings
from tests.conftest import ROOT
from tests.unit.mocks import Created, record

ROLE_TYPE = "thorbisdb:db:Role"
EXTERNAL_TYPE = "thorbisdb:external:Postgres"
EXTERNAL_DSN = "postgresql://admin:External-Secret-0123@db.example.com:5432/thorbis"


def settings_of(platform: str) -> StackSettings:
    values: dict[str, Any] = {"platform": platform, **{key: f"{key}-Secret-0123456789" for key in PASSWORD_KEYS}}
    if platform == "external":
        values["externalDsn"] = EXTERNAL_DSN
    secrets = {f"thorbis:{key}" for key in [*PASSWORD_KEYS, "externalDsn"]}
    raw = {f"thorbis:{key}": v if isinstance(v, str) else json.dumps(v) for key, v in values.items()}
    return parse_settings("dev", raw, secrets, ROOT)


def connection(platform_owns_roles: bool) -> ConnectionSpec:
    return ConnectionSpec(
        platform="local",
        primary=Endpoint.loopback(15432),
        database="thorbis",
        admin_user="postgres",
        admin_password="Admin-Secret-0123456789",
        platform_owns_roles=platform_owns_roles,
    )


def declared_layer(settings: StackSettings, handed_over: ConnectionSpec) -> list[Created]:
    def program() -> pulumi.Output[None]:
        DatabaseLayer("thorbis", pulumi.Output.secret(handed_over), settings)
        return pulumi.Output.from_input(None)

    created, _ = record(program, "dev")
    return created


@pytest.mark.parametrize("owns", [True, False])
def test_roles_are_adopted_when_the_connection_says_the_platform_owns_them(owns: bool) -> None:
    """On platform `local` in the settings, yet the ConnectionSpec decides."""
    roles = [c for c in declared_layer(settings_of("local"), connection(owns)) if c.type == ROLE_TYPE]
    assert {str(role.inputs["name"]) for role in roles} == {role.name for role in load_access().roles}
    assert {role.inputs["name"]: role.inputs["adoptExisting"] for role in roles} == {
        role.inputs["name"]: owns for role in roles
    }


def test_the_external_platform_checks_every_extension_the_layer_installs_and_owns_the_roles() -> None:
    seen: dict[str, ConnectionSpec] = {}

    def program() -> pulumi.Output[None]:
        platform = ExternalPlatform("thorbis", settings_of("external"))

        async def observe() -> None:
            found = await platform.connection.future()
            assert found is not None
            seen["connection"] = found

        return pulumi.Output.from_input(observe())

    created, _ = record(program, "dev")
    [server] = [c for c in created if c.type == EXTERNAL_TYPE]
    assert server.inputs["requiredExtensions"] == [extension.name for extension in load_access().extensions]
    assert "pg_partman" in server.inputs["requiredExtensions"]
    assert seen["connection"].platform_owns_roles
    assert seen["connection"].primary == Endpoint(host="db.example.com", port=5432)
