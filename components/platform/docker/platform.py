"""The `docker` platform: the local topology as containers (pulumi-docker), for hosts with a Docker engine.

Our machines have no Docker engine, so this platform is tested with Pulumi mocks (tests/unit), which
assert the resource graph: one network, images, a volume per PostgreSQL server, containers with health
checks, ports bound to 127.0.0.1, and passwords only in (secret) environment variables.
"""

from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_docker as docker
from psycopg import sql

from components import scram
from components.connection import LOOPBACK, ConnectionSpec
from components.platform.build import Platform
from components.platform.local.pgbouncer import AUTH_ROLE, auth_lookup_statements, auth_role_statement, shared_settings
from components.platform.local.platform import loopback_connection, postgres_settings, replication_slot
from components.platform.local.postgres import replication_role_statement
from components.platform.local.postgres_files import REPLICATION_ROLE, SUPERUSER
from components.platform.routing import read_database
from components.platform.secrets import secret_of
from config import StackSettings

POSTGRES_IMAGE_DOCKERFILE = Path(__file__).with_name("postgres.Dockerfile")
#: Where the init script finds the program that turns a password into its SCRAM verifier (components/scram.py).
SCRAM_PROGRAM = "/usr/local/lib/thorbis/scram.py"
PG_INTERNAL_PORT = 5432
PGBOUNCER_INTERNAL_PORT = 5432
REDIS_INTERNAL_PORT = 6379
#: The primary's first start (docker-entrypoint-initdb.d) runs this with the replication role, PgBouncer's
#: auth role and its lookup, made by the statements of the local platform; the passwords come from the
#: container's secret environment and reach the server only as SCRAM verifiers computed here, in psql
#: variables (by the program uploaded at SCRAM_PROGRAM, which the container's environment names).
INIT_SCRIPT = """#!/bin/bash
set -euo pipefail
verifier() {{ printf '%s' "$1" | python3 "$SCRAM_PROGRAM"; }}
psql -v ON_ERROR_STOP=1 --username {superuser} --dbname "$POSTGRES_DB" \\
     -v replication_verifier="$(verifier "$REPLICATION_PASSWORD")" \\
     -v auth_verifier="$(verifier "$PGBOUNCER_AUTH_PASSWORD")" <<'SQL'
{statements}
SQL
echo "host replication {replication_role} all scram-sha-256" >> "$PGDATA/pg_hba.conf"
"""


def init_script() -> str:
    statements = [
        replication_role_statement("CREATE", sql.SQL(":'replication_verifier'")),
        auth_role_statement("CREATE", sql.SQL(":'auth_verifier'")),
        *auth_lookup_statements(),
    ]
    return INIT_SCRIPT.format(
        superuser=SUPERUSER,
        statements="\n".join(f"{statement.as_string()};" for statement in statements),
        replication_role=REPLICATION_ROLE,
    )


def postgres_command(settings: StackSettings) -> list[str]:
    command = ["postgres"]
    for name, value in postgres_settings(settings).items():
        command += ["-c", f"{name}={value}"]
    return command


def env(name: str, value: pulumi.Input[str]) -> pulumi.Output[str]:
    return pulumi.Output.concat(name, "=", value)


def healthcheck(*test: str) -> docker.ContainerHealthcheckArgs:
    return docker.ContainerHealthcheckArgs(
        tests=["CMD-SHELL", " ".join(test)], interval="5s", timeout="3s", retries=10, start_period="10s"
    )


def pgbouncer_ini(settings: StackSettings) -> str:
    """The container's pgbouncer.ini: the write pool on the primary and the read pool over the replicas
    (the primary when there are none).

    The containers share one port, so the read pool is PgBouncer's own host list (round robin). There is
    no read router here: a stopped replica keeps its turn in the list, and each connection PgBouncer tries
    there costs that pool `serverLoginRetry` (thorbis_client retries the read).
    """
    network, database = settings.docker.network, settings.postgres.database
    server = f"host={network}-primary port={PG_INTERNAL_PORT}"
    replicas = ",".join(f"{network}-replica-{index}" for index in range(settings.replicas.count))
    read = f"host={replicas} port={PG_INTERNAL_PORT}" if replicas else server
    values = {
        "listen_addr": "0.0.0.0",
        "listen_port": str(PGBOUNCER_INTERNAL_PORT),
        "auth_file": "/etc/pgbouncer/userlist.txt",
        **shared_settings(settings.pgbouncer.model_dump(by_alias=True)),
    }
    lines = [
        "[databases]",
        f"{database} = {server} dbname={database}",
        f"{read_database(database)} = {read} dbname={database}",
        f"* = {server}",
    ]
    return "\n".join([*lines, "[pgbouncer]", *(f"{name} = {value}" for name, value in values.items()), ""])


def published(internal: int, external: int) -> list[docker.ContainerPortArgs]:
    return [docker.ContainerPortArgs(internal=internal, external=external, ip=LOOPBACK)]


class DockerPlatform(Platform):
    """Primary, replicas, PgBouncer and Redis containers on one network of the stack's own."""

    connection: pulumi.Output[ConnectionSpec]
    database_connection: pulumi.Output[ConnectionSpec]

    def __init__(self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("thorbis:platform:Docker", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        spec = settings.docker
        superuser = secret_of(settings, "postgres_password")
        replication = secret_of(settings, "replication_password")
        auth = secret_of(settings, "pgbouncer_auth_password")
        redis_password = secret_of(settings, "redis_password")
        network = docker.Network(f"{name}-network", docker.NetworkArgs(name=spec.network), child)
        joined = [docker.ContainerNetworksAdvancedArgs(name=network.name)]

        # The official image lacks pg_cron, pg_partman and hypopg: we add Debian's packages to it.
        postgres_image = docker.Image(
            f"{name}-postgres-image",
            docker.ImageArgs(
                image_name=f"thorbis-postgres:{settings.docker.postgres_image.replace(':', '-').replace('/', '-')}",
                build=docker.DockerBuildArgs(
                    context=str(POSTGRES_IMAGE_DOCKERFILE.parent),
                    dockerfile=str(POSTGRES_IMAGE_DOCKERFILE),
                    args={"BASE_IMAGE": spec.postgres_image},
                ),
                skip_push=True,
            ),
            child,
        )
        database = settings.postgres.database
        primary_volume = docker.Volume(f"{name}-primary-data", docker.VolumeArgs(name=f"{spec.network}-primary"), child)
        primary = docker.Container(
            f"{name}-primary",
            docker.ContainerArgs(
                name=f"{spec.network}-primary",
                image=postgres_image.image_name,
                command=postgres_command(settings),
                envs=[
                    env("POSTGRES_PASSWORD", superuser),
                    env("POSTGRES_DB", database),
                    env("REPLICATION_PASSWORD", replication),
                    env("PGBOUNCER_AUTH_PASSWORD", auth),
                    f"SCRAM_PROGRAM={SCRAM_PROGRAM}",
                    "POSTGRES_INITDB_ARGS=--data-checksums --auth=scram-sha-256",
                ],
                uploads=[
                    docker.ContainerUploadArgs(
                        file="/docker-entrypoint-initdb.d/10-thorbis.sh",
                        content=init_script(),
                        executable=True,
                    ),
                    docker.ContainerUploadArgs(file=SCRAM_PROGRAM, content=Path(scram.__file__).read_text()),
                ],
                volumes=[
                    docker.ContainerVolumeArgs(
                        volume_name=primary_volume.name, container_path="/var/lib/postgresql/data"
                    )
                ],
                networks_advanced=joined,
                ports=published(PG_INTERNAL_PORT, settings.postgres.port),
                healthcheck=healthcheck("pg_isready", "-U", SUPERUSER, "-d", database),
                restart="unless-stopped",
                wait=True,
            ),
            child,
        )
        replicas = [
            self.replica(name, settings, index, port, postgres_image, primary, replication, joined)
            for index, port in enumerate(settings.replica_ports)
        ]
        pooler = docker.Container(
            f"{name}-pgbouncer",
            docker.ContainerArgs(
                name=f"{spec.network}-pgbouncer",
                image=docker.RemoteImage(
                    f"{name}-pgbouncer-image",
                    docker.RemoteImageArgs(name=spec.pgbouncer_image, keep_locally=True),
                    child,
                ).image_id,
                # the image writes userlist.txt from these, and its own pgbouncer.ini only when none exists
                envs=[
                    f"DB_HOST={spec.network}-primary",
                    "AUTH_TYPE=scram-sha-256",
                    env("DB_USER", AUTH_ROLE),
                    env("DB_PASSWORD", auth),
                ],
                uploads=[
                    docker.ContainerUploadArgs(file="/etc/pgbouncer/pgbouncer.ini", content=pgbouncer_ini(settings))
                ],
                networks_advanced=joined,
                ports=published(PGBOUNCER_INTERNAL_PORT, settings.pgbouncer.port),
                healthcheck=healthcheck("pg_isready", "-h", LOOPBACK, "-p", str(PGBOUNCER_INTERNAL_PORT)),
                restart="unless-stopped",
            ),
            pulumi.ResourceOptions(parent=self, depends_on=[primary]),
        )
        redis_volume = docker.Volume(f"{name}-redis-data", docker.VolumeArgs(name=f"{spec.network}-redis"), child)
        persistence = "--appendonly yes" if settings.redis.persistence else "--appendonly no --save ''"
        redis = docker.Container(
            f"{name}-redis",
            docker.ContainerArgs(
                name=f"{spec.network}-redis",
                image=docker.RemoteImage(
                    f"{name}-redis-image",
                    docker.RemoteImageArgs(name=spec.redis_image, keep_locally=True),
                    child,
                ).image_id,
                # The password reaches redis-server through the environment, never its command line.
                command=[
                    "sh",
                    "-c",
                    'exec redis-server --requirepass "$REDIS_PASSWORD" '
                    f"--maxmemory {settings.redis.maxmemory} --maxmemory-policy {settings.redis.maxmemory_policy} "
                    f"{persistence}",
                ],
                envs=[env("REDIS_PASSWORD", redis_password), env("REDISCLI_AUTH", redis_password)],
                volumes=[docker.ContainerVolumeArgs(volume_name=redis_volume.name, container_path="/data")],
                networks_advanced=joined,
                ports=published(REDIS_INTERNAL_PORT, settings.redis.port),
                healthcheck=healthcheck("redis-cli", "ping"),
                restart="unless-stopped",
            ),
            child,
        )
        ready = [primary.id, pooler.id, redis.id, *(replica.id for replica in replicas)]
        self.connection = pulumi.Output.all(superuser, redis_password, *ready).apply(
            lambda values: loopback_connection(settings, "docker", values[0], values[1])
        )
        self.database_connection = pulumi.Output.all(superuser, primary.id).apply(
            lambda values: loopback_connection(settings, "docker", values[0], "").for_database()
        )
        self.register_outputs({})

    def replica(
        self,
        name: str,
        settings: StackSettings,
        index: int,
        port: int,
        image: docker.Image,
        primary: docker.Container,
        replication: pulumi.Output[str],
        joined: list[docker.ContainerNetworksAdvancedArgs],
    ) -> docker.Container:
        network = settings.docker.network
        volume = docker.Volume(
            f"{name}-replica-{index}-data",
            docker.VolumeArgs(name=f"{network}-replica-{index}"),
            pulumi.ResourceOptions(parent=self),
        )
        backup = (
            f'pg_basebackup -h {network}-primary -U {REPLICATION_ROLE} -D "$PGDATA" -R -X stream '
            f"-S {replication_slot(index)}"
        )
        # A retry starts from an empty directory, and reuses the slot an interrupted first try created.
        start = (
            'if [ ! -s "$PGDATA/PG_VERSION" ]; then '
            f'until rm -rf "$PGDATA"/* && {{ {backup} -C || {{ rm -rf "$PGDATA"/* && {backup}; }}; }}; '
            "do sleep 2; done; fi; exec docker-entrypoint.sh " + " ".join(postgres_command(settings))
        )
        return docker.Container(
            f"{name}-replica-{index}",
            docker.ContainerArgs(
                name=f"{network}-replica-{index}",
                image=image.image_name,
                user="postgres",
                command=["bash", "-c", start],
                envs=[env("PGPASSWORD", replication), "PGDATA=/var/lib/postgresql/data"],
                volumes=[
                    docker.ContainerVolumeArgs(volume_name=volume.name, container_path="/var/lib/postgresql/data")
                ],
                networks_advanced=joined,
                ports=published(PG_INTERNAL_PORT, port),
                healthcheck=healthcheck("pg_isready", "-U", SUPERUSER),
                restart="unless-stopped",
            ),
            pulumi.ResourceOptions(parent=self, depends_on=[primary]),
        )
