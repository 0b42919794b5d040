"""The docker platform under Pulumi mocks: the resource graph it declares and the connection it hands on.

No Docker engine runs here. Every registration goes to a recording mock; the tests read the recorded
graph (type, name, inputs, parent, dependencies) and the component's `connection` output.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pytest
from psycopg import sql
from pulumi.runtime.rpc import is_rpc_secret, unwrap_rpc_secret

from components import scram
from components.connection import LOOPBACK, ConnectionSpec, Endpoint
from components.platform.docker.platform import SCRAM_PROGRAM, DockerPlatform, init_script
from components.platform.local.pgbouncer import auth_lookup_statements, auth_role_statement
from components.platform.local.postgres import replication_role_statement
from config import StackSettings, parse_settings
from tests.conftest import ROOT
from tests.unit.mocks import Created, Wiring, record

DOCKERFILE = ROOT / "components" / "platform" / "docker" / "postgres.Dockerfile"
STACK = "staging"
NETWORK = "thorbis-staging"  # the default network: thorbis-<stack>
POSTGRES_IMAGE = "postgres:16"  # not the default, so the build arg is seen to follow the config
PRIMARY_PORT, REPLICA_BASE_PORT, PGBOUNCER_PORT, REDIS_PORT = 15432, 15500, 16432, 16379
PASSWORDS = {
    "postgresPassword": "Admin-Secret-0123456789",
    "replicationPassword": "Replica-Secret-0123456789",
    "pgbouncerAuthPassword": "Bouncer-Secret-0123456789",
    "redisPassword": "Redis-Secret-0123456789",
    "authenticatorPassword": "Authenticator-Secret-0123456789",
    "reportingPassword": "Reporting-Secret-0123456789",
}
PGDATA = "/var/lib/postgresql/data"

COMPONENT = "thorbis:platform:Docker"
NETWORK_TYPE = "docker:index/network:Network"
IMAGE_TYPE = "docker:index/image:Image"
REMOTE_IMAGE_TYPE = "docker:index/remoteImage:RemoteImage"
VOLUME_TYPE = "docker:index/volume:Volume"
CONTAINER_TYPE = "docker:index/container:Container"


def stack_settings(replicas: int) -> StackSettings:
    """Staging on platform docker, every port set, the four passwords stored as secrets."""
    values: dict[str, object] = {
        "platform": "docker",
        "postgres": {"port": PRIMARY_PORT},
        "replicas": {"count": replicas, "basePort": REPLICA_BASE_PORT},
        "pgbouncer": {"port": PGBOUNCER_PORT},
        "redis": {"port": REDIS_PORT},
        "docker": {"postgresImage": POSTGRES_IMAGE},
        **PASSWORDS,
    }
    raw = {f"thorbis:{key}": v if isinstance(v, str) else json.dumps(v) for key, v in values.items()}
    return parse_settings(STACK, raw, {f"thorbis:{key}" for key in PASSWORDS}, ROOT)


@dataclass
class Deployment:
    """What one run of DockerPlatform declared, and the connection it resolved to."""

    created: list[Created]
    wiring: dict[str, Wiring]
    connection: ConnectionSpec
    connection_is_secret: bool
    names: dict[str, Created] = field(init=False)

    def __post_init__(self) -> None:
        self.names = {resource.name: resource for resource in self.created}
        assert len(self.names) == len(self.created), "two resources share a name"

    def of_type(self, type_token: str) -> list[Created]:
        return [resource for resource in self.created if resource.type == type_token]

    @property
    def containers(self) -> dict[str, Created]:
        """Containers by their Docker name (the `name` input), not their Pulumi name."""
        return {str(c.inputs["name"]): c for c in self.of_type(CONTAINER_TYPE)}


def pulled_image_ids(created: Created) -> dict[str, Any]:
    """What a pull reports beside the inputs: the image id."""
    return {"imageId": f"sha256:{created.name}"} if created.type == REMOTE_IMAGE_TYPE else {}


def deploy(settings: StackSettings) -> Deployment:
    seen: dict[str, Any] = {}

    def program() -> pulumi.Output[None]:
        platform = DockerPlatform("thorbis", settings)

        async def observe() -> None:
            seen["connection"] = await platform.connection.future()
            seen["secret"] = await platform.connection.is_secret()

        return pulumi.Output.from_input(observe())

    created, wiring = record(program, STACK, pulled_image_ids)
    return Deployment(created, wiring, seen["connection"], seen["secret"])


@pytest.fixture(scope="module")
def staging() -> Deployment:
    return deploy(stack_settings(replicas=2))


def env_list(container: Created) -> list[str]:
    """The container's `envs`, which must arrive as a secret (the whole list, since it holds passwords)."""
    envs = container.inputs["envs"]
    assert is_rpc_secret(envs), f"envs of {container.name} are not secret"
    value = unwrap_rpc_secret(envs)
    assert isinstance(value, list)
    return [str(item) for item in value]


def command_of(container: Created) -> list[str]:
    return [str(part) for part in container.inputs.get("command") or []]


def replica_names(count: int) -> list[str]:
    return [f"{NETWORK}-replica-{index}" for index in range(count)]


# --- the graph -----------------------------------------------------------------------------------------


def test_every_resource_is_a_child_of_the_component(staging: Deployment) -> None:
    [component] = [c for c in staging.created if c.type == COMPONENT]
    component_urn = staging.wiring[component.name].urn
    children = [c for c in staging.created if c.type != COMPONENT]
    assert children
    assert {c.name: staging.wiring[c.name].parent for c in children} == {c.name: component_urn for c in children}


def test_one_network_that_every_container_joins(staging: Deployment) -> None:
    [network] = staging.of_type(NETWORK_TYPE)
    assert network.inputs["name"] == NETWORK
    for name, container in staging.containers.items():
        assert container.inputs["networksAdvanced"] == [{"name": NETWORK}], name


def test_postgres_image_is_built_from_our_dockerfile_on_the_configured_base(staging: Deployment) -> None:
    [image] = staging.of_type(IMAGE_TYPE)
    build = image.inputs["build"]
    assert Path(build["dockerfile"]) == DOCKERFILE
    assert DOCKERFILE.is_file()
    assert Path(build["context"]) == DOCKERFILE.parent
    assert build["args"] == {"BASE_IMAGE": POSTGRES_IMAGE}
    assert image.inputs["skipPush"] is True
    postgres_servers = [NETWORK + "-primary", *replica_names(2)]
    for name in postgres_servers:
        assert staging.containers[name].inputs["image"] == image.inputs["imageName"], name


def test_pgbouncer_and_redis_images_are_pulled(staging: Deployment) -> None:
    pulled = {str(image.inputs["name"]): image for image in staging.of_type(REMOTE_IMAGE_TYPE)}
    assert set(pulled) == {"edoburu/pgbouncer:latest", "redis:7"}
    for image_name, container in (("edoburu/pgbouncer:latest", "pgbouncer"), ("redis:7", "redis")):
        expected_id = f"sha256:{pulled[image_name].name}"  # the id pulled_image_ids reports for the pull
        assert staging.containers[f"{NETWORK}-{container}"].inputs["image"] == expected_id


def test_a_volume_per_postgres_server_and_one_for_redis(staging: Deployment) -> None:
    volumes = sorted(str(volume.inputs["name"]) for volume in staging.of_type(VOLUME_TYPE))
    servers = [f"{NETWORK}-primary", *replica_names(2)]
    assert volumes == sorted([*servers, f"{NETWORK}-redis"])
    for server in servers:
        mounts = staging.containers[server].inputs["volumes"]
        assert mounts == [{"volumeName": server, "containerPath": PGDATA}], server
    assert staging.containers[f"{NETWORK}-redis"].inputs["volumes"] == [
        {"volumeName": f"{NETWORK}-redis", "containerPath": "/data"}
    ]


def test_containers_are_primary_replicas_pgbouncer_and_redis(staging: Deployment) -> None:
    expected = {f"{NETWORK}-primary", *replica_names(2), f"{NETWORK}-pgbouncer", f"{NETWORK}-redis"}
    assert set(staging.containers) == expected
    assert len(staging.of_type(CONTAINER_TYPE)) == len(expected)


@pytest.mark.parametrize(
    ("container", "internal", "external"),
    [
        ("primary", 5432, PRIMARY_PORT),
        ("replica-0", 5432, REPLICA_BASE_PORT),
        ("replica-1", 5432, REPLICA_BASE_PORT + 1),
        ("pgbouncer", 5432, PGBOUNCER_PORT),
        ("redis", 6379, REDIS_PORT),
    ],
)
def test_container_has_a_healthcheck_and_publishes_its_port_on_loopback_only(
    staging: Deployment, container: str, internal: int, external: int
) -> None:
    inputs = staging.containers[f"{NETWORK}-{container}"].inputs
    published = [(port.get("ip"), int(port["internal"]), int(port["external"])) for port in inputs["ports"]]
    assert published == [(LOOPBACK, internal, external)]
    check = inputs["healthcheck"]
    assert check["tests"][0] == "CMD-SHELL"
    assert check["tests"][1].strip()
    assert int(check["retries"]) >= 1
    assert inputs["restart"] == "unless-stopped"


def test_replicas_clone_the_primary_into_their_own_slot_after_it(staging: Deployment) -> None:
    primary_urn = staging.wiring["thorbis-primary"].urn
    for index, name in enumerate(replica_names(2)):
        replica = staging.containers[name]
        assert primary_urn in staging.wiring[replica.name].dependencies, f"{name} does not depend on the primary"
        script = command_of(replica)[-1]
        clone = re.search(r"pg_basebackup ([^;]*)", script)
        assert clone is not None, f"{name} does not run pg_basebackup: {script}"
        args = shlex.split(clone.group(1))
        option = {flag: args[args.index(flag) + 1] for flag in ("-h", "-U", "-S")}
        assert option == {"-h": f"{NETWORK}-primary", "-U": "replicator", "-S": f"replica_{index}"}
        assert {"-R", "-C"} <= set(args)  # writes its standby config, creates its slot
        assert "wal_level=replica" in script  # a standby needs the primary's settings too
        assert "PGPASSWORD=" + PASSWORDS["replicationPassword"] in env_list(replica)


def test_primary_preloads_pg_cron_and_streams_wal(staging: Deployment) -> None:
    command = command_of(staging.containers[f"{NETWORK}-primary"])
    assert command[0] == "postgres"
    settings = {command[i + 1] for i, part in enumerate(command[:-1]) if part == "-c"}
    assert "shared_preload_libraries=pg_cron,pg_stat_statements" in settings
    assert "wal_level=replica" in settings


def test_pgbouncer_serves_a_write_pool_and_a_read_pool_over_the_replicas(staging: Deployment) -> None:
    [upload] = staging.containers[f"{NETWORK}-pgbouncer"].inputs["uploads"]
    assert upload["file"] == "/etc/pgbouncer/pgbouncer.ini"
    lines = upload["content"].splitlines()
    assert f"thorbis = host={NETWORK}-primary port=5432 dbname=thorbis" in lines
    assert f"thorbis_read = host={NETWORK}-replica-0,{NETWORK}-replica-1 port=5432 dbname=thorbis" in lines
    assert {"min_pool_size = 0", "server_login_retry = 1", "pool_mode = transaction"} <= set(lines)
    assert not any(password in upload["content"] for password in PASSWORDS.values())


def test_primary_uploads_the_init_script_that_creates_the_roles(staging: Deployment) -> None:
    [upload, program] = staging.containers[f"{NETWORK}-primary"].inputs["uploads"]
    assert upload["file"].startswith("/docker-entrypoint-initdb.d/")
    assert upload["executable"] is True
    script = upload["content"]
    assert script == init_script()  # run against a real server in tests/integration/test_local_servers.py
    for statement in (*auth_lookup_statements(), auth_role_statement("CREATE", sql.SQL(":'auth_verifier'"))):
        assert statement.as_string() in script, "the docker primary's auth lookup differs from the local one"
    assert replication_role_statement("CREATE", sql.SQL(":'replication_verifier'")).as_string() in script
    assert not any(password in script for password in PASSWORDS.values())
    # the verifiers are computed in the container by the program the script names
    assert program["file"] == SCRAM_PROGRAM and 'python3 "$SCRAM_PROGRAM"' in script
    assert f"SCRAM_PROGRAM={SCRAM_PROGRAM}" in env_list(staging.containers[f"{NETWORK}-primary"])
    assert program["content"] == Path(scram.__file__).read_text()


def test_the_scram_program_prints_a_verifier_of_the_password_on_its_stdin() -> None:
    password = PASSWORDS["replicationPassword"]
    done = subprocess.run([sys.executable, scram.__file__], input=password, capture_output=True, text=True, check=True)
    assert scram.is_verifier_of(done.stdout.strip(), password)


def test_pgbouncer_resets_every_server_connection_after_each_transaction(staging: Deployment) -> None:
    [upload] = staging.containers[f"{NETWORK}-pgbouncer"].inputs["uploads"]
    assert {"server_reset_query = DISCARD ALL", "server_reset_query_always = 1"} <= set(upload["content"].splitlines())


# --- secrets -------------------------------------------------------------------------------------------


def test_no_password_outside_container_envs(staging: Deployment) -> None:
    for resource in staging.created:
        shown = {key: value for key, value in resource.inputs.items() if key != "envs"}
        text = json.dumps(shown, default=str)
        leaked = [key for key, password in PASSWORDS.items() if password in text]
        assert not leaked, f"{resource.name} has {leaked} outside its envs"
    for name, container in staging.containers.items():
        in_command_or_name = " ".join([*command_of(container), name])
        assert not any(password in in_command_or_name for password in PASSWORDS.values()), name


@pytest.mark.parametrize(
    ("container", "expected"),
    [
        (
            "primary",
            {
                "POSTGRES_PASSWORD": "postgresPassword",
                "REPLICATION_PASSWORD": "replicationPassword",
                "PGBOUNCER_AUTH_PASSWORD": "pgbouncerAuthPassword",
            },
        ),
        ("replica-0", {"PGPASSWORD": "replicationPassword"}),
        ("replica-1", {"PGPASSWORD": "replicationPassword"}),
        ("pgbouncer", {"DB_PASSWORD": "pgbouncerAuthPassword"}),
        ("redis", {"REDIS_PASSWORD": "redisPassword", "REDISCLI_AUTH": "redisPassword"}),
    ],
)
def test_passwords_reach_containers_through_secret_envs(
    staging: Deployment, container: str, expected: dict[str, str]
) -> None:
    envs = env_list(staging.containers[f"{NETWORK}-{container}"])
    with_password = {
        entry.partition("=")[0]: key for entry in envs for key, pw in PASSWORDS.items() if entry.endswith("=" + pw)
    }
    assert with_password == expected
    for variable, key in expected.items():
        assert f"{variable}={PASSWORDS[key]}" in envs


# --- the connection ------------------------------------------------------------------------------------


def test_connection_describes_the_containers_and_is_secret(staging: Deployment) -> None:
    assert staging.connection == ConnectionSpec(
        platform="docker",
        primary=Endpoint.loopback(PRIMARY_PORT),
        database="thorbis",
        admin_user="postgres",
        admin_password=PASSWORDS["postgresPassword"],
        pooler=Endpoint.loopback(PGBOUNCER_PORT),
        replicas=(Endpoint.loopback(REPLICA_BASE_PORT), Endpoint.loopback(REPLICA_BASE_PORT + 1)),
        redis=Endpoint.loopback(REDIS_PORT),
        redis_password=PASSWORDS["redisPassword"],
        read_database="thorbis_read",
    )
    assert staging.connection_is_secret


# --- without replicas ----------------------------------------------------------------------------------


def test_no_replicas_means_no_replica_containers_or_volumes() -> None:
    deployment = deploy(stack_settings(replicas=0))
    assert set(deployment.containers) == {f"{NETWORK}-primary", f"{NETWORK}-pgbouncer", f"{NETWORK}-redis"}
    volumes = {str(volume.inputs["name"]) for volume in deployment.of_type(VOLUME_TYPE)}
    assert volumes == {f"{NETWORK}-primary", f"{NETWORK}-redis"}
    assert not any("pg_basebackup" in " ".join(command_of(c)) for c in deployment.containers.values())
    assert deployment.connection.replicas == ()
    assert deployment.connection.primary == Endpoint.loopback(PRIMARY_PORT)
    assert deployment.connection_is_secret


def test_without_replicas_the_read_pool_is_the_primary() -> None:
    """The read DSN names the read pool on every stack: with no replica it reads from the primary."""
    deployment = deploy(stack_settings(replicas=0))
    [upload] = deployment.containers[f"{NETWORK}-pgbouncer"].inputs["uploads"]
    assert f"thorbis_read = host={NETWORK}-primary port=5432 dbname=thorbis" in upload["content"].splitlines()
    assert deployment.connection.read_database == "thorbis_read"
