"""What a platform hands the database layer, under Pulumi's mocks: the layer declares the same whatever the
platform (whether a role is adopted is decided against the live catalog, not by the platform), and the
external platform checks every extension the layer installs."""

from __future__ import annotations

import json
from typing import Any

import pulumi

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


def connection(platform: str) -> ConnectionSpec:
    return ConnectionSpec(
        platform=platform,
        primary=Endpoint.loopback(15432),
        database="thorbis",
        admin_user="postgres",
        admin_password="Admin-Secret-0123456789",
    )


def declared_layer(settings: StackSettings, handed_over: ConnectionSpec) -> list[Created]:
    def program() -> pulumi.Output[None]:
        DatabaseLayer("thorbis", pulumi.Output.secret(handed_over), settings)
        return pulumi.Output.from_input(None)

    created, _ = record(program, "dev")
    return created


def test_roles_are_declared_alike_on_every_platform() -> None:
    """Supabase's roles exist on external and not on local: the Role kind adopts the ones it finds (never
    altered, never dropped), so the program declares them the same and never marks them by platform."""
    declared = {
        platform: {
            str(role.inputs["name"]): role.inputs
            for role in declared_layer(settings_of(platform), connection(platform))
            if role.type == ROLE_TYPE
        }
        for platform in ("local", "external")
    }
    assert set(declared["local"]) == {role.name for role in load_access().roles}
    assert declared["local"] == declared["external"]
    assert not any(inputs.get("adoptExisting") for inputs in declared["local"].values())


def test_the_external_platform_checks_every_extension_the_layer_installs() -> None:
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
    assert seen["connection"].primary == Endpoint(host="db.example.com", port=5432)
