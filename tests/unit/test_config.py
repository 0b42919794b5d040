"""Stack configuration: defaults, every kind of bad value, secrets, prod rules, ports, the example stacks."""

from __future__ import annotations

import json
import socket
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pytest
import yaml
from pydantic import BaseModel, ValidationError

import config
from components.connection import LOOPBACK
from components.database.declared.access import load_access
from components.platform.local.platform import postgres_settings
from config import (
    BackupSettings,
    ConfigError,
    DockerSettings,
    HaSettings,
    JobsSettings,
    PartitioningSettings,
    PgBouncerSettings,
    PostgresSettings,
    RedisSettings,
    ReplicasSettings,
    StackSettings,
    check_host_ports,
    load_settings,
    parse_settings,
)
from config.gucs import OWNED_GUCS
from config.settings import DEDICATED_GUCS, CacheSettings, CacheTierSettings, SettingsContext
from tests.conftest import ROOT

PASSWORD_KEYS = ("postgresPassword", "replicationPassword", "pgbouncerAuthPassword", "redisPassword")
ROLE_PASSWORD_KEYS = ("authenticatorPassword", "reportingPassword")
SECRET_VALUES = {name: f"{name}-Val-0123456789" for name in (*PASSWORD_KEYS, *ROLE_PASSWORD_KEYS)}
ROLE_SECRETS = {name: SECRET_VALUES[name] for name in ROLE_PASSWORD_KEYS}
ALL_PASSWORD_KEYS = (*PASSWORD_KEYS, *ROLE_PASSWORD_KEYS)
DSN_SECRET = "postgresql://app:DsnS3cret-pass@db.example.com:5432/thorbis"
DEV_PORTS = {55432, 55433, 56432, 56379}


def _text(value: object) -> str:
    """A value as Pulumi hands it to the program: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclass
class Stack:
    """A stack's config as the engine passes it: full keys to strings, plus the encrypted keys."""

    name: str = "dev"
    values: dict[str, object] = field(default_factory=lambda: dict(SECRET_VALUES))
    secret: set[str] = field(default_factory=lambda: {*PASSWORD_KEYS, *ROLE_PASSWORD_KEYS})

    def with_values(self, **values: object) -> Stack:
        merged = {**self.values, **values}
        return Stack(self.name, {k: v for k, v in merged.items() if v is not None}, set(self.secret))

    def raw(self) -> dict[str, str]:
        return {f"thorbis:{key}": _text(value) for key, value in self.values.items()}

    def parse(self, project_root: Path = ROOT) -> StackSettings:
        return parse_settings(self.name, self.raw(), {f"thorbis:{k}" for k in self.secret}, project_root)

    def error(self) -> ConfigError:
        with pytest.raises(ConfigError) as caught:
            self.parse()
        return caught.value


def problem_lines(error: ConfigError, key: str) -> list[str]:
    """The message lines about `key` exactly (not a longer key that starts with it)."""
    marker = f"stack '{error.stack}': {key} "
    return [line for line in str(error).splitlines() if marker in line]


def the_line(error: ConfigError, key: str) -> str:
    lines = problem_lines(error, key)
    assert len(lines) == 1, f"expected one problem about {key}, got:\n{error}"
    return lines[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 (all held at once while chosen, so none repeats)."""
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind((LOOPBACK, 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another process (this test) listens on, on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((LOOPBACK, 0))
        holder.listen()
        port: int = holder.getsockname()[1]
        yield port


# --- good configurations -----------------------------------------------------------------------------


def test_the_company_claim_is_top_level_by_default_or_a_dotted_path() -> None:
    assert Stack().parse().company_claim == "company_id"
    nested = Stack().with_values(companyClaim="app_metadata.company_id").parse()
    assert nested.company_claim == "app_metadata.company_id"


def test_defaults() -> None:
    settings = Stack().parse()
    assert settings.stack == "dev"
    assert settings.platform == "local"
    assert settings.state_dir == ROOT / ".state" / "stacks" / "dev"
    assert settings.allow_data_loss is False
    assert settings.lock_timeout == "5s"
    assert settings.postgres == PostgresSettings()
    assert (settings.postgres.port, settings.postgres.database, settings.postgres.max_connections) == (
        5432,
        "thorbis",
        200,
    )
    assert (settings.postgres.shared_buffers, settings.postgres.work_mem) == ("128MB", "4MB")
    assert (settings.postgres.maintenance_work_mem, settings.postgres.effective_cache_size) == (
        "64MB",
        "512MB",
    )
    assert dict(settings.postgres.settings) == {}
    assert (settings.replicas.count, settings.replicas.base_port, settings.replica_ports) == (0, None, [])
    assert settings.pgbouncer == PgBouncerSettings()
    assert (settings.pgbouncer.port, settings.pgbouncer.pool_mode, settings.pgbouncer.default_pool_size) == (
        6432,
        "transaction",
        25,
    )
    assert (settings.redis.port, settings.redis.maxmemory, settings.redis.maxmemory_policy) == (
        6379,
        "256mb",
        "allkeys-lru",
    )
    assert settings.redis.persistence is False
    assert settings.docker.network == "thorbis-dev"
    assert settings.docker.postgres_image == "postgres:15"
    assert settings.docker.pgbouncer_image == "edoburu/pgbouncer:latest"
    assert settings.docker.redis_image == "redis:7"
    assert settings.external_dsn is None
    assert not settings.is_prod
    assert settings.all_ports == {
        "thorbis:postgres.port": 5432,
        "thorbis:pgbouncer.port": 6432,
        "thorbis:redis.port": 6379,
    }


def test_full_prod_config() -> None:
    stack = Stack("prod").with_values(
        platform="local",
        allowDataLoss="false",
        lockTimeout="500ms",
        stateDir="/srv/thorbis/prod",
        postgres={
            "port": 5432,
            "database": "thorbis_prod",
            "maxConnections": 500,
            "sharedBuffers": "8GB",
            "workMem": "32MB",
            "maintenanceWorkMem": "2GB",
            "effectiveCacheSize": "24GB",
            "settings": {"random_page_cost": 1.1, "jit": False, "auto_explain.log_min_duration": "1s"},
        },
        replicas={"count": 2},
        pgbouncer={"port": 6432, "maxClientConn": 4000, "maxDbConnections": 400, "poolMode": "session"},
        redis={"port": 6379, "maxmemory": "4gb", "maxmemoryPolicy": "volatile-lfu", "persistence": True},
    )
    settings = stack.parse()
    assert settings.is_prod
    assert settings.state_dir == Path("/srv/thorbis/prod")
    assert settings.lock_timeout == "500ms"
    assert settings.postgres.database == "thorbis_prod"
    assert settings.postgres.max_connections == 500
    assert dict(settings.postgres.settings) == {
        "random_page_cost": "1.1",
        "jit": "off",
        "auto_explain.log_min_duration": "1s",
    }
    assert settings.replica_ports == [5433, 5434]
    assert settings.pgbouncer.pool_mode == "session"
    assert settings.redis.persistence is True
    assert settings.redis.maxmemory_policy == "volatile-lfu"
    assert settings.all_ports == {
        "thorbis:postgres.port": 5432,
        "thorbis:replicas.basePort+0": 5433,
        "thorbis:replicas.basePort+1": 5434,
        "thorbis:pgbouncer.port": 6432,
        "thorbis:redis.port": 6379,
    }


def test_docker_config() -> None:
    stack = Stack("qa").with_values(
        platform="docker",
        docker={
            "network": "thorbis_qa.net",
            "postgresImage": "ghcr.io/thorbis/postgres:15.8@sha256:abc123",
            "redisImage": "redis:7.2-alpine",
        },
    )
    settings = stack.parse()
    assert settings.platform == "docker"
    assert settings.docker.network == "thorbis_qa.net"
    assert settings.docker.postgres_image == "ghcr.io/thorbis/postgres:15.8@sha256:abc123"
    assert settings.docker.pgbouncer_image == "edoburu/pgbouncer:latest"
    assert settings.docker.redis_image == "redis:7.2-alpine"


def test_external_needs_only_the_dsn() -> None:
    stack = Stack(
        "ext",
        values={"platform": "external", "externalDsn": DSN_SECRET, **ROLE_SECRETS},
        secret={"externalDsn", *ROLE_PASSWORD_KEYS},
    )
    settings = stack.parse()
    assert settings.platform == "external"
    assert settings.external_dsn is not None
    assert settings.external_dsn.get_secret_value() == DSN_SECRET
    assert settings.postgres_password is None


def test_external_accepts_an_optional_redis_password() -> None:
    stack = Stack(
        "ext",
        values={"platform": "external", "externalDsn": "postgres://db.internal/thorbis", **SECRET_VALUES},
        secret={"externalDsn", *PASSWORD_KEYS, *ROLE_PASSWORD_KEYS},
    )
    settings = stack.parse()
    assert settings.redis_password is not None
    assert settings.redis_password.get_secret_value() == SECRET_VALUES["redisPassword"]


def test_relative_state_dir_is_taken_from_the_project_root(tmp_path: Path) -> None:
    settings = Stack().with_values(stateDir="data/dev").parse(project_root=tmp_path)
    assert settings.state_dir == tmp_path.resolve() / "data" / "dev"
    assert settings.state_dir.is_absolute()


def test_base_port_sets_replica_ports() -> None:
    settings = Stack().with_values(replicas={"count": 3, "basePort": 7000}).parse()
    assert settings.replica_ports == [7000, 7001, 7002]


def test_replica_ports_follow_the_postgres_port_by_default() -> None:
    settings = Stack().with_values(postgres={"port": 55432}, replicas={"count": 2}).parse()
    assert settings.replica_ports == [55433, 55434]


def test_ha_nodes_and_etcd_members_have_ports_of_their_own() -> None:
    settings = (
        Stack()
        .with_values(postgres={"port": 40000}, replicas={"count": 2}, ha={"mode": "patroni"}, backup={"enabled": False})
        .parse()
    )
    assert [(n.name, n.port, n.rest_port) for n in settings.ha_nodes] == [
        ("node-0", 40010, 40011),
        ("node-1", 40012, 40013),
        ("node-2", 40014, 40015),
    ]
    assert [(p.client_port, p.peer_port) for p in settings.etcd_peers] == [
        (40040, 40041),
        (40042, 40043),
        (40044, 40045),
    ]
    assert settings.ha_read_port == 40001
    assert set(settings.all_ports.values()) == {40000, 40001, *range(40010, 40016), *range(40040, 40046), 6432, 6379}


def test_with_ha_the_replicas_base_port_is_unused_so_it_neither_clashes_nor_overflows() -> None:
    """With ha the replicas are Patroni nodes on ha.basePort: replicas.basePort names no port of the stack."""
    ha = {"mode": "patroni", "readPort": 41000, "basePort": 41010, "etcdBasePort": 41040}
    for replicas in ({"count": 1, "basePort": 41000}, {"count": 3, "basePort": 65534}):
        settings = Stack().with_values(replicas=replicas, ha=ha, backup={"enabled": False}).parse()
        assert not [key for key in settings.all_ports if key.startswith("thorbis:replicas.")]
        assert settings.ha_read_port == 41000 and len(settings.ha_nodes) == replicas["count"] + 1


def test_ha_is_off_by_default() -> None:
    settings = Stack().parse()
    assert settings.ha.mode == "off" and settings.ha_nodes == [] and settings.etcd_peers == []


def test_numbers_are_taken_where_pulumi_stores_text() -> None:
    settings = Stack().with_values(postgres={"port": "5440", "sharedBuffers": 16384}).parse()
    assert settings.postgres.port == 5440
    assert settings.postgres.shared_buffers == "16384"


def test_keys_of_other_namespaces_are_ignored() -> None:
    raw = {**Stack().raw(), "aws:region": "eu-west-1", "docker:host": "unix:///var/run/docker.sock"}
    settings = parse_settings("dev", raw, [f"thorbis:{k}" for k in ALL_PASSWORD_KEYS], ROOT)
    assert settings.platform == "local"


def test_settings_are_immutable() -> None:
    settings = Stack().with_values(postgres={"settings": {"jit": "off"}}).parse()
    with pytest.raises(ValidationError):
        settings.platform = "docker"
    with pytest.raises(ValidationError):
        settings.postgres.port = 1
    with pytest.raises(TypeError):
        settings.postgres.settings["jit"] = "on"  # type: ignore[index]


def test_python_code_may_use_snake_case_names() -> None:
    assert PostgresSettings(max_connections=300).max_connections == 300
    assert PostgresSettings.model_validate({"maxConnections": 300}).max_connections == 300
    assert ReplicasSettings(base_port=7000).base_port == 7000


@pytest.mark.parametrize(
    "model",
    [
        StackSettings,
        PostgresSettings,
        ReplicasSettings,
        PgBouncerSettings,
        RedisSettings,
        DockerSettings,
        PartitioningSettings,
        JobsSettings,
        BackupSettings,
        HaSettings,
        CacheSettings,
        CacheTierSettings,
    ],
)
def test_every_key_is_documented_with_its_default_and_allowed_values(model: type[BaseModel]) -> None:
    for name, info in model.model_fields.items():
        if name == "stack":
            continue
        assert info.description and "default" in info.description.lower(), f"{model.__name__}.{name}"
        extra = info.json_schema_extra
        assert isinstance(extra, dict) and extra.get("allowed"), f"{model.__name__}.{name}"


def test_the_package_exports_the_interface() -> None:
    for name in ("ConfigError", "parse_settings", "load_settings", "check_host_ports", "StackSettings"):
        assert hasattr(config, name)


# --- bad configurations: one problem each, named by key, value and what is allowed ------------------


@dataclass(frozen=True)
class Bad:
    """A config with one problem: the key the message must name, and the fragments it must contain."""

    id: str
    values: Mapping[str, object]
    key: str
    says: tuple[str, ...]
    stack: str = "dev"
    plain: tuple[str, ...] = ()


BAD = [
    Bad("platform", {"platform": "k8s"}, "thorbis:platform", ('"k8s"', '"local"', '"docker"', '"external"')),
    Bad("allow-data-loss-word", {"allowDataLoss": "yes"}, "thorbis:allowDataLoss", ('"yes"', "true or false")),
    Bad(
        "lock-timeout-words",
        {"lockTimeout": "5 seconds"},
        "thorbis:lockTimeout",
        ('"5 seconds"', "ms", "min"),
    ),
    Bad("lock-timeout-unit", {"lockTimeout": "5sec"}, "thorbis:lockTimeout", ('"5sec"', "PostgreSQL duration")),
    Bad("state-dir-empty", {"stateDir": " "}, "thorbis:stateDir", ("must not be empty",)),
    Bad(
        "company-claim-path",
        {"companyClaim": "app_metadata..company-id"},
        "thorbis:companyClaim",
        ('"app_metadata..company-id"', "app_metadata.company_id"),
    ),
    Bad("premake-zero", {"partitioning": {"premake": 0}}, "thorbis:partitioning.premake", ("= 0:", "1 to 60")),
    Bad(
        "retention-text",
        {"partitioning": {"retentionMonths": "2 years"}},
        "thorbis:partitioning.retentionMonths",
        ('"2 years"', "integer >= 1"),
    ),
    Bad(
        "job-unknown",
        {"jobs": {"schedules": {"refresh-everything": "@daily"}}},
        "thorbis:jobs.schedules",
        ("refresh-everything not in sql/jobs.yaml", "partman-maintenance"),
    ),
    Bad(
        "job-schedule",
        {"jobs": {"schedules": {"partman-maintenance": "hourly"}}},
        "thorbis:jobs.schedules.partman-maintenance",
        ('"hourly"', "pg_cron schedule"),
    ),
    Bad(
        "job-parameter-unknown",
        {"jobs": {"parameters": {"keepLogsDays": 7}}},
        "thorbis:jobs.parameters",
        ("keepLogsDays not in sql/jobs.yaml", "webhookLogRetentionDays"),
    ),
    Bad(
        "job-parameter-zero",
        {"jobs": {"parameters": {"retentionBatchSize": 0}}},
        "thorbis:jobs.parameters.retentionBatchSize",
        ("= 0:", "integer >= 1"),
    ),
    Bad("port-low", {"postgres": {"port": 80}}, "thorbis:postgres.port", ("= 80:", "1024 to 65535")),
    Bad("port-high", {"postgres": {"port": 70000}}, "thorbis:postgres.port", ("70000", "1024 to 65535")),
    Bad("port-text", {"postgres": {"port": "abc"}}, "thorbis:postgres.port", ('"abc"', "integer port")),
    Bad("port-bool", {"postgres": {"port": True}}, "thorbis:postgres.port", ("= true:", "integer port")),
    Bad("port-float", {"postgres": {"port": 5432.5}}, "thorbis:postgres.port", ("5432.5", "integer port")),
    Bad(
        "database",
        {"postgres": {"database": "Thorbis-DB"}},
        "thorbis:postgres.database",
        ('"Thorbis-DB"', "[a-z_]"),
    ),
    Bad(
        "max-connections",
        {"postgres": {"maxConnections": 5}},
        "thorbis:postgres.maxConnections",
        ("= 5:", "10 to 10000"),
    ),
    Bad(
        "shared-buffers-unit",
        {"postgres": {"sharedBuffers": "128mb"}},
        "thorbis:postgres.sharedBuffers",
        ('"128mb"', "kB, MB, GB or TB"),
    ),
    Bad("work-mem", {"postgres": {"workMem": "lots"}}, "thorbis:postgres.workMem", ('"lots"', "memory size")),
    Bad(
        "guc-name",
        {"postgres": {"settings": {"Bad-Name": "1"}}},
        "thorbis:postgres.settings",
        ('"Bad-Name"', "GUC name", "^[a-z_][a-z0-9_.]*$"),
    ),
    Bad(
        "guc-with-own-key",
        {"postgres": {"settings": {"work_mem": "1MB"}}},
        "thorbis:postgres.settings",
        ('"work_mem"', "thorbis:postgres.workMem instead"),
    ),
    Bad(
        "guc-value-mapping",
        {"postgres": {"settings": {"jit": {"on": 1}}}},
        "thorbis:postgres.settings.jit",
        ('{"on": 1}', "string or a number"),
    ),
    Bad(
        "settings-not-mapping",
        {"postgres": {"settings": ["jit"]}},
        "thorbis:postgres.settings",
        ('["jit"]', "mapping"),
    ),
    Bad(
        "guc-value-type",
        {"postgres": {"settings": {"random_page_cost": "fast"}}},
        "thorbis:postgres.settings.random_page_cost",
        ('= "fast"', 'PostgreSQL refuses it: invalid value for parameter "random_page_cost": "fast"'),
    ),
    Bad(
        "guc-unknown",
        {"postgres": {"settings": {"random_page_costs": "2"}}},
        "thorbis:postgres.settings.random_page_costs",
        ('unrecognized configuration parameter "random_page_costs"',),
    ),
    Bad(
        "guc-unit",
        {"postgres": {"settings": {"log_min_duration_statement": "5 fortnights"}}},
        "thorbis:postgres.settings.log_min_duration_statement",
        ("invalid value", 'Valid units for this parameter are "us", "ms", "s", "min", "h", and "d"'),
    ),
    Bad(
        "guc-range",
        {"postgres": {"settings": {"lock_timeout": -5}}},
        "thorbis:postgres.settings.lock_timeout",
        ('= "-5"', "outside the valid range", "(0 .. 2147483647)"),
    ),
    Bad(
        "guc-enum",
        {"postgres": {"settings": {"default_transaction_isolation": "snapshot"}}},
        "thorbis:postgres.settings.default_transaction_isolation",
        ("Available values: serializable, repeatable read, read committed, read uncommitted",),
    ),
    Bad(
        "guc-internal",
        {"postgres": {"settings": {"data_checksums": "on"}}},
        "thorbis:postgres.settings.data_checksums",
        ('parameter "data_checksums" cannot be changed',),
    ),
    Bad(
        "guc-owned-wal-level",
        {"postgres": {"settings": {"wal_level": "minimal"}}},
        "thorbis:postgres.settings.wal_level",
        ("is set by the stack itself", "remove it"),
    ),
    Bad(
        "guc-owned-preload",
        {"postgres": {"settings": {"shared_preload_libraries": "auto_explain"}}},
        "thorbis:postgres.settings.shared_preload_libraries",
        ("is set by the stack itself",),
    ),
    Bad(
        "guc-owned-by-patroni",
        {"postgres": {"settings": {"synchronous_standby_names": "*"}}},
        "thorbis:postgres.settings.synchronous_standby_names",
        ("is set by the stack itself",),
    ),
    Bad(
        "guc-commit-before-the-standby",
        {
            "ha": {"mode": "patroni", "synchronous": True},
            "replicas": {"count": 1},
            "backup": {"restoreOnProvision": False},
            "postgres": {"settings": {"synchronous_commit": "local"}},
        },
        "thorbis:postgres.settings.synchronous_commit",
        ('= "local"', "thorbis:ha.synchronous true promises", "remote_write"),
    ),
    Bad(
        "job-schedule-minute",
        {"jobs": {"schedules": {"partman-maintenance": "99 * * * *"}}},
        "thorbis:jobs.schedules.partman-maintenance",
        ("the minute field '99' has 99, outside 0-59",),
    ),
    Bad(
        "job-schedule-step",
        {"jobs": {"schedules": {"partman-maintenance": "*/0 * * * *"}}},
        "thorbis:jobs.schedules.partman-maintenance",
        ("has a step of 0",),
    ),
    Bad(
        "backup-schedule-hour",
        {"backup": {"schedule": "30 24 * * *"}},
        "thorbis:backup.schedule",
        ("the hour field '24' has 24, outside 0-23",),
    ),
    Bad("replica-count-high", {"replicas": {"count": 50}}, "thorbis:replicas.count", ("= 50:", "0 to 8")),
    Bad("replica-count", {"replicas": {"count": -1}}, "thorbis:replicas.count", ("= -1:", "0 to 8")),
    Bad("replica-count-bool", {"replicas": {"count": True}}, "thorbis:replicas.count", ("= true:", "integer from 0")),
    Bad("replica-count-text", {"replicas": {"count": "two"}}, "thorbis:replicas.count", ('"two"', "integer")),
    Bad(
        "replica-base-port",
        {"replicas": {"basePort": 100}},
        "thorbis:replicas.basePort",
        ("= 100:", "1024 to 65535"),
    ),
    Bad(
        "pool-mode",
        {"pgbouncer": {"poolMode": "statement"}},
        "thorbis:pgbouncer.poolMode",
        ('"statement"', '"transaction"', '"session"'),
    ),
    Bad(
        "pool-size",
        {"pgbouncer": {"defaultPoolSize": 0}},
        "thorbis:pgbouncer.defaultPoolSize",
        ("= 0:", ">= 1"),
    ),
    Bad(
        "reserve-timeout",
        {"pgbouncer": {"reservePoolTimeout": -3}},
        "thorbis:pgbouncer.reservePoolTimeout",
        ("-3", "seconds >= 0"),
    ),
    Bad(
        "max-client-conn",
        {"pgbouncer": {"maxClientConn": "many"}},
        "thorbis:pgbouncer.maxClientConn",
        ('"many"', ">= 1"),
    ),
    Bad(
        "pool-over-max-connections",
        {"pgbouncer": {"defaultPoolSize": 300}},
        "thorbis:pgbouncer.defaultPoolSize",
        ("= 300:", "305", "thorbis:postgres.maxConnections = 200"),
    ),
    Bad(
        "db-connections-over-max-connections",
        {"postgres": {"maxConnections": 100}, "pgbouncer": {"maxDbConnections": 150}},
        "thorbis:pgbouncer.maxDbConnections",
        ("= 150:", "thorbis:postgres.maxConnections = 100"),
    ),
    Bad("redis-maxmemory", {"redis": {"maxmemory": "2 GB"}}, "thorbis:redis.maxmemory", ('"2 GB"', "mb", "gb")),
    Bad(
        "redis-policy",
        {"redis": {"maxmemoryPolicy": "lru"}},
        "thorbis:redis.maxmemoryPolicy",
        ('"lru"', '"allkeys-lru"', '"volatile-ttl"', '"noeviction"'),
    ),
    Bad(
        "redis-persistence",
        {"redis": {"persistence": "yes"}},
        "thorbis:redis.persistence",
        ('"yes"', "true or false"),
    ),
    Bad(
        "docker-image",
        {"docker": {"postgresImage": "Postgres 15"}},
        "thorbis:docker.postgresImage",
        ('"Postgres 15"', "image reference"),
    ),
    Bad(
        "docker-network",
        {"docker": {"network": "-net"}},
        "thorbis:docker.network",
        ('"-net"', "network name"),
    ),
    Bad("section-not-mapping", {"postgres": "5432"}, "thorbis:postgres", ("= 5432:", "must be a mapping")),
    Bad(
        "section-broken-json",
        {"redis": '{"port": '},
        "thorbis:redis",
        ('"{\\"port\\": "', "must be a mapping"),
    ),
    Bad(
        "unknown-top-key",
        {"replica": {"count": 1}},
        "thorbis:replica",
        ("unknown key", "did you mean replicas?"),
    ),
    Bad(
        "unknown-top-key-lists-allowed",
        {"colour": "blue"},
        "thorbis:colour",
        ("platform, stateDir", "externalDsn"),
    ),
    Bad(
        "unknown-nested-key",
        {"postgres": {"maxConnection": 300}},
        "thorbis:postgres.maxConnection",
        ("= 300:", "did you mean maxConnections?", "allowed keys under thorbis:postgres: port, database"),
    ),
    Bad(
        "snake-case-nested-key",
        {"pgbouncer": {"pool_mode": "session"}},
        "thorbis:pgbouncer.pool_mode",
        ("unknown key", "did you mean poolMode?"),
    ),
    Bad(
        "dotted-top-key",
        {"postgres.port": "5433"},
        "thorbis:postgres.port",
        ("nested keys go inside", "--path"),
    ),
    Bad("internal-field-is-not-a-key", {"stack": "prod"}, "thorbis:stack", ("unknown key",)),
    Bad(
        "password-short",
        {"postgresPassword": "short"},
        "thorbis:postgresPassword",
        ("= <secret>:", "at least 12 characters"),
    ),
    Bad(
        "password-plain",
        {},
        "thorbis:replicationPassword",
        ("= <secret>:", "plain text", "pulumi config set --secret -s dev thorbis:replicationPassword"),
        plain=("replicationPassword",),
    ),
    Bad(
        "password-missing",
        {"redisPassword": None},
        "thorbis:redisPassword",
        (
            "(not set)",
            "required on platform local",
            "pulumi config set --secret -s dev thorbis:redisPassword",
        ),
    ),
    Bad(
        "password-missing-docker",
        {"platform": "docker", "pgbouncerAuthPassword": None},
        "thorbis:pgbouncerAuthPassword",
        ("(not set)", "required on platform docker"),
    ),
    Bad(
        "external-without-dsn",
        {"platform": "external"},
        "thorbis:externalDsn",
        (
            "(not set)",
            "required on platform external",
            "pulumi config set --secret -s dev thorbis:externalDsn",
        ),
    ),
    Bad(
        "external-dsn-scheme",
        {"platform": "external", "externalDsn": "mysql://app:pw@db/thorbis"},
        "thorbis:externalDsn",
        ("= <secret>:", "postgres:// or postgresql://"),
        plain=(),
    ),
    Bad(
        "prod-data-loss",
        {"allowDataLoss": "true", "replicas": {"count": 1}},
        "thorbis:allowDataLoss",
        ("= true:", "must be false on prod"),
        stack="prod",
    ),
    Bad(
        "prod-replicas",
        {"replicas": {"count": 0}},
        "thorbis:replicas.count",
        ("= 0:", "prod needs at least 1 streaming replica (set thorbis:replicas.count >= 1)"),
        stack="prod",
    ),
    Bad(
        "prod-replicas-default",
        {},
        "thorbis:replicas.count",
        ("prod needs at least 1 streaming replica",),
        stack="prod",
    ),
    Bad(
        "port-clash",
        {"pgbouncer": {"port": 7000}, "redis": {"port": 7000}},
        "thorbis:redis.port",
        ("= 7000:", "thorbis:pgbouncer.port", "own port"),
    ),
    Bad(
        "replica-port-clash",
        {"replicas": {"count": 2}, "pgbouncer": {"port": 5434}},
        "thorbis:pgbouncer.port",
        ("= 5434:", "thorbis:replicas.basePort+1"),
    ),
    Bad(
        "replica-on-primary-port",
        {"replicas": {"count": 1, "basePort": 5432}},
        "thorbis:replicas.basePort+0",
        ("= 5432:", "thorbis:postgres.port"),
    ),
    Bad(
        "replicas-beyond-65535",
        {"replicas": {"count": 3, "basePort": 65534}},
        "thorbis:replicas.count",
        ("= 3:", "65536", "lower thorbis:replicas.basePort"),
    ),
    Bad("backup-enabled-word", {"backup": {"enabled": "yes"}}, "thorbis:backup.enabled", ('"yes"', "true or false")),
    Bad("backup-directory-empty", {"backup": {"directory": " "}}, "thorbis:backup.directory", ("must not be empty",)),
    Bad(
        "backup-directory-type",
        {"backup": {"directory": ["/srv/backups"]}},
        "thorbis:backup.directory",
        ('["/srv/backups"]', "directory path"),
    ),
    Bad("backup-retention-zero", {"backup": {"retention": 0}}, "thorbis:backup.retention", ("= 0:", "1 to 100")),
    Bad(
        "backup-retention-text",
        {"backup": {"retention": "two"}},
        "thorbis:backup.retention",
        ('"two"', "integer from 1 to 100"),
    ),
    Bad(
        "backup-schedule-pg-cron-seconds",
        {"backup": {"schedule": "30 seconds"}},
        "thorbis:backup.schedule",
        ('"30 seconds"', "OS cron schedule"),
    ),
    Bad(
        "backup-restore-word",
        {"backup": {"restoreOnProvision": "always"}},
        "thorbis:backup.restoreOnProvision",
        ('"always"', "true or false"),
    ),
    Bad("ha-mode", {"ha": {"mode": "on"}}, "thorbis:ha.mode", ('"on"', 'one of "off", "patroni"')),
    Bad("ha-even-etcd", {"ha": {"mode": "patroni", "etcdMembers": 2}}, "thorbis:ha.etcdMembers", ("odd number",)),
    Bad(
        "ha-read-port-on-a-node",
        {
            "replicas": {"count": 1},
            "ha": {"mode": "patroni", "readPort": 41000, "basePort": 41000},
            "backup": {"enabled": False},
        },
        "thorbis:ha.basePort+0",
        ("= 41000:", "thorbis:ha.readPort", "own port"),
    ),
    Bad(
        "ha-on-docker",
        {"platform": "docker", "replicas": {"count": 1}, "ha": {"mode": "patroni"}, "backup": {"enabled": False}},
        "thorbis:ha.mode",
        ("platform local only", "platform docker"),
    ),
    Bad(
        "ha-without-a-standby",
        {"ha": {"mode": "patroni"}, "backup": {"enabled": False}},
        "thorbis:replicas.count",
        ("needs a node to fail over to",),
    ),
    Bad(
        "ha-timings",
        {"replicas": {"count": 1}, "ha": {"mode": "patroni", "loopWait": 10}, "backup": {"enabled": False}},
        "thorbis:ha.ttl",
        ("loopWait + 2 x retryTimeout = 26 is more than ttl = 20",),
    ),
    Bad(
        "ha-restoring-on-provision",
        {"replicas": {"count": 1}, "ha": {"mode": "patroni"}},
        "thorbis:backup.restoreOnProvision",
        ("not re-provisioned from the repository",),
    ),
    Bad(
        "backup-unknown-key",
        {"backup": {"retentionFull": 3}},
        "thorbis:backup.retentionFull",
        ("unknown key", "did you mean retention?", "allowed keys under thorbis:backup: enabled, directory"),
    ),
]


def _bad_stack(case: Bad) -> Stack:
    stack = Stack(case.stack).with_values(**case.values)
    if "externalDsn" in case.values:
        stack.secret.add("externalDsn")
    stack.secret -= set(case.plain)
    return stack


@pytest.mark.parametrize("case", BAD, ids=[case.id for case in BAD])
def test_bad_config_is_reported_by_key_value_and_allowed_values(case: Bad) -> None:
    error = _bad_stack(case).error()
    line = the_line(error, case.key)
    assert line.startswith(f"stack '{case.stack}': {case.key} ")
    for fragment in case.says:
        assert fragment in line, f"{fragment!r} missing from: {line}"


def test_good_settings_and_schedules_pass_the_servers_and_crons_checks() -> None:
    settings = (
        Stack("dev")
        .with_values(
            postgres={"settings": {"random_page_cost": 1.1, "log_min_duration_statement": "250ms", "jit": False}},
            jobs={"schedules": {"partman-maintenance": "0 3 * jan-mar mon,fri"}},
            backup={"schedule": "*/15 0-6 1,15 * *"},
        )
        .parse()
    )
    assert settings.postgres.settings["jit"] == "off"


def test_the_settings_the_stack_owns_are_the_ones_it_writes() -> None:
    written = set(postgres_settings(Stack("dev").with_values(backup={"enabled": True}).parse()))
    assert written - set(DEDICATED_GUCS) - {"port"} <= OWNED_GUCS


def test_the_example_message_reads_as_documented() -> None:
    error = Stack("prod").with_values(replicas={"count": 0}).error()
    assert str(error) == (
        "stack 'prod': thorbis:replicas.count = 0: prod needs at least 1 streaming replica "
        "(set thorbis:replicas.count >= 1)"
    )


def test_all_problems_come_in_one_error() -> None:
    error = (
        Stack("prod")
        .with_values(
            platform="k8s",
            allowDataLoss="true",
            postgres={"port": 80, "bogus": 1},
            pgbouncer={"port": 6379},
            colour="blue",
            redisPassword=None,
        )
        .error()
    )
    keys = [
        "thorbis:platform",
        "thorbis:postgres.port",
        "thorbis:postgres.bogus",
        "thorbis:colour",
        "thorbis:allowDataLoss",  # prod rule, still checked although other keys failed
        "thorbis:replicas.count",  # prod rule
        "thorbis:redis.port",  # clash with pgbouncer... skipped: postgres failed, so ports are not compared
    ]
    for key in keys[:-1]:
        assert len(problem_lines(error, key)) == 1, f"{key} not reported once in:\n{error}"
    assert problem_lines(error, keys[-1]) == []
    assert len(error.problems) == 6
    assert str(error).splitlines()[0] == "stack 'prod': 6 configuration problems (see Pulumi.prod.yaml):"


def test_a_bad_value_is_not_reported_again_by_the_rules() -> None:
    # the platform is invalid, so which secrets it needs is unknown: no "required" problems
    error = Stack(values={"platform": "k8s", **ROLE_SECRETS}, secret=set(ROLE_PASSWORD_KEYS)).error()
    assert [problem.key for problem in error.problems] == ["thorbis:platform"]


def test_ports_are_compared_when_the_port_sections_are_valid() -> None:
    error = Stack().with_values(lockTimeout="soon", pgbouncer={"port": 6379}).error()
    assert len(problem_lines(error, "thorbis:lockTimeout")) == 1
    assert "= 6379:" in the_line(error, "thorbis:redis.port")


# --- secrets -----------------------------------------------------------------------------------------


def _all_secrets() -> list[str]:
    return [*SECRET_VALUES.values(), DSN_SECRET, "app:DsnS3cret-pass"]


def _assert_no_secret(text: str) -> None:
    for secret in _all_secrets():
        assert secret not in text


def test_secrets_are_not_in_repr_str_or_dumps() -> None:
    stack = Stack().with_values(externalDsn=DSN_SECRET)
    stack.secret.add("externalDsn")
    settings = stack.parse()
    assert settings.postgres_password is not None
    assert settings.postgres_password.get_secret_value() == SECRET_VALUES["postgresPassword"]
    for text in (repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())):
        _assert_no_secret(text)


@pytest.mark.parametrize(
    ("values", "plain"),
    [
        ({"postgresPassword": "tiny-secret"}, ()),
        ({"platform": "external", "externalDsn": "mysql://app:DsnS3cret-pass@db/x"}, ()),
        ({}, PASSWORD_KEYS),
        ({"apiToken": SECRET_VALUES["redisPassword"]}, ()),
    ],
    ids=["too-short", "bad-dsn", "plain-text", "unknown-secret-key"],
)
def test_secrets_are_never_in_messages_or_tracebacks(values: dict[str, object], plain: tuple[str, ...]) -> None:
    stack = Stack().with_values(**values)
    stack.secret |= {"externalDsn", "apiToken"}
    stack.secret -= set(plain)
    error = stack.error()
    text = "".join(traceback.format_exception(error))
    _assert_no_secret(text)
    assert "tiny-secret" not in text
    assert "<secret>" in text
    assert error.__cause__ is None and error.__context__ is None


def test_pydantic_text_never_prints_a_value_either() -> None:
    # the models used directly, outside parse_settings: pydantic's own message must not hold the secret
    context = SettingsContext(stack="dev", project_root=ROOT)
    with pytest.raises(ValidationError) as caught:
        StackSettings.model_validate({"stack": "dev", "postgresPassword": "tiny-secret"}, context=context)
    assert "tiny-secret" not in str(caught.value)
    assert caught.value.errors()[0]["loc"] == ("postgresPassword",)


def test_a_mapping_stored_as_secret_is_not_shown() -> None:
    stack = Stack().with_values(postgres={"port": 80, "database": "Hidden-Name"})
    stack.secret.add("postgres")
    error = stack.error()
    assert "= <secret>:" in the_line(error, "thorbis:postgres.port")
    assert "Hidden-Name" not in str(error)


# --- host ports --------------------------------------------------------------------------------------


def _local_stack_on(postgres_port: int) -> StackSettings:
    pgbouncer, redis = free_ports(2)
    return (
        Stack()
        .with_values(postgres={"port": postgres_port}, pgbouncer={"port": pgbouncer}, redis={"port": redis})
        .parse()
    )


def test_a_port_held_by_another_process_is_reported(busy_port: int) -> None:
    settings = _local_stack_on(busy_port)
    with pytest.raises(ConfigError) as caught:
        check_host_ports(settings, LOOPBACK, owned_ports=[])
    line = the_line(caught.value, "thorbis:postgres.port")
    assert f"= {busy_port}:" in line
    assert "already in use" in line
    assert "set thorbis:postgres.port to a free port" in line
    assert len(caught.value.problems) == 1


def test_a_port_held_by_the_stack_itself_passes(busy_port: int) -> None:
    settings = _local_stack_on(busy_port)
    check_host_ports(settings, LOOPBACK, owned_ports={busy_port})


def test_a_busy_replica_port_names_the_base_port_key(busy_port: int) -> None:
    postgres, pgbouncer, redis = free_ports(3)
    settings = (
        Stack()
        .with_values(
            postgres={"port": postgres},
            replicas={"count": 1, "basePort": busy_port},
            pgbouncer={"port": pgbouncer},
            redis={"port": redis},
        )
        .parse()
    )
    with pytest.raises(ConfigError) as caught:
        check_host_ports(settings, LOOPBACK, owned_ports=())
    line = the_line(caught.value, "thorbis:replicas.basePort+0")
    assert f"= {busy_port}:" in line and "set thorbis:replicas.basePort to a free port" in line


def test_free_ports_pass() -> None:
    check_host_ports(_local_stack_on(free_ports(1)[0]), LOOPBACK, owned_ports=())


def test_external_platform_listens_on_no_host_port(busy_port: int) -> None:
    stack = Stack(
        values={"platform": "external", "externalDsn": DSN_SECRET, **ROLE_SECRETS},
        secret={"externalDsn", *ROLE_PASSWORD_KEYS},
    )
    settings = stack.with_values(postgres={"port": busy_port}).parse()
    check_host_ports(settings, LOOPBACK, owned_ports=())


# --- load_settings: what the engine hands the program ------------------------------------------------


def test_load_settings_reads_the_engine_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    raw = {**Stack().with_values(replicas={"count": 1}).raw(), "aws:region": "eu-west-1"}
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(raw))
    monkeypatch.setenv("PULUMI_CONFIG_SECRET_KEYS", json.dumps([f"thorbis:{k}" for k in ALL_PASSWORD_KEYS]))
    monkeypatch.setattr(pulumi, "get_stack", lambda: "staging")
    settings = load_settings(tmp_path)
    assert settings.stack == "staging"
    assert settings.replica_ports == [5433]
    assert settings.state_dir == tmp_path.resolve() / ".state" / "stacks" / "staging"


def test_load_settings_reports_plain_text_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(Stack().raw()))
    monkeypatch.setenv("PULUMI_CONFIG_SECRET_KEYS", json.dumps([]))
    monkeypatch.setattr(pulumi, "get_stack", lambda: "dev")
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path)
    assert len(caught.value.problems) == len(ALL_PASSWORD_KEYS)
    assert all("plain text" in problem.reason for problem in caught.value.problems)


# --- the example stack files -------------------------------------------------------------------------


def _stack_file(stack: str) -> tuple[str, dict[str, str]]:
    """The file's text and its config as the engine would pass it: scalars as text, mappings as JSON."""
    text = (ROOT / f"Pulumi.{stack}.yaml").read_text()
    document = yaml.safe_load(text)
    return text, {key: _text(value) for key, value in document["config"].items()}


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_example_stack_files_validate(stack: str) -> None:
    text, raw = _stack_file(stack)
    assert not {f"thorbis:{name}" for name in [*ALL_PASSWORD_KEYS, "externalDsn"]} & raw.keys(), "secrets in file"
    for name in ALL_PASSWORD_KEYS:
        assert f"pulumi config set --secret -s {stack} thorbis:{name}" in text
    secrets = {f"thorbis:{name}": SECRET_VALUES[name] for name in ALL_PASSWORD_KEYS}
    settings = parse_settings(stack, {**raw, **secrets}, secrets.keys(), ROOT)
    assert settings.allow_data_loss is False
    assert not set(settings.all_ports.values()) & DEV_PORTS
    if stack == "staging":
        assert len(settings.replica_ports) == 1
        assert settings.ha.mode == "patroni" and settings.ha.synchronous
        assert "basePort" not in yaml.safe_load(raw["thorbis:replicas"]), "unused with ha: the nodes are on ha.basePort"
    else:
        assert settings.is_prod
        assert len(settings.replica_ports) == 2
        assert settings.redis.persistence is True
        assert (settings.postgres.port, settings.pgbouncer.port, settings.redis.port) == (5432, 6432, 6379)


def test_prod_has_more_memory_than_staging() -> None:
    staging = parse_settings("staging", {**_stack_file("staging")[1], **_secrets()}, _secrets().keys(), ROOT)
    prod = parse_settings("prod", {**_stack_file("prod")[1], **_secrets()}, _secrets().keys(), ROOT)
    assert _megabytes(prod.postgres.shared_buffers) > _megabytes(staging.postgres.shared_buffers)
    assert _megabytes(prod.postgres.effective_cache_size) > _megabytes(staging.postgres.effective_cache_size)


def _secrets() -> dict[str, str]:
    return {f"thorbis:{name}": SECRET_VALUES[name] for name in ALL_PASSWORD_KEYS}


def _megabytes(size: str) -> int:
    units = {"kB": 1 / 1024, "MB": 1, "GB": 1024, "TB": 1024 * 1024}
    number = size.rstrip("kBMGT")
    return int(int(number) * units[size[len(number) :]])


def test_every_login_password_that_sql_access_yaml_names_is_a_secret_key_of_the_config() -> None:
    """The roles' password keys live in the data; the config must have a typed, secret key for each."""
    named = {role.password for role in load_access().roles if role.password}
    assert named == set(config.settings.ROLE_PASSWORD_KEYS)
    assert named <= config.settings.SECRET_KEYS
