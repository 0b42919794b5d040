"""The typed spec of one stack's `thorbis:` configuration, with every key's default and allowed values.

Keys are camelCase in `Pulumi.<stack>.yaml` and snake_case attributes here. Each field carries its
documentation (`description`, ending with its default) and, under `json_schema_extra["allowed"]`, the
allowed values in words, which `config.translate` puts into error messages. Rules that involve more
than one key (prod rules, required secrets, port clashes) live in `config.rules`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    SecretStr,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from components.database.declared.jobs import JobData, JobsFile, load_jobs
from components.platform.local.pgbouncer import PoolMode
from components.platform.local.redis import EvictionPolicy
from config.cron import five_fields

NAMESPACE = "thorbis"
"""The Pulumi config namespace of this project: every key is `thorbis:<name>`."""

PROD_STACK = "prod"
MIN_PASSWORD_LENGTH = 12
GUC_NAME_PATTERN = r"^[a-z_][a-z0-9_.]*$"
PlatformName = Literal["local", "docker", "external"]


def one_of(choices: Any) -> str:
    """The allowed values of a Literal, in words: 'one of "a", "b"'."""
    return "one of " + ", ".join(f'"{choice}"' for choice in get_args(choices))


@dataclass(frozen=True)
class SettingsContext:
    """What validation needs besides the config values: passed as pydantic's validation context."""

    stack: str
    project_root: Path

    @cached_property
    def declared_jobs(self) -> JobsFile:
        """sql/jobs.yaml, read once per validation."""
        return load_jobs()


def _context(info: ValidationInfo) -> SettingsContext:
    if not isinstance(info.context, SettingsContext):
        raise TypeError("stack settings are validated with a SettingsContext: build them with parse_settings()")
    return info.context


#: Whose secret a key is: the servers' (local and docker), a login role's (sql/access.yaml), or the DSN.
SecretOf = Literal["server", "role", "dsn"]


def setting(
    default: Any, doc: str, allowed: str, *, validate_default: bool = False, secret: SecretOf | None = None
) -> Any:
    """A documented config field: `doc` says what it is (and its default), `allowed` what values pass;
    `secret` marks a key that must be set with `pulumi config set --secret`."""
    return Field(
        default,
        description=doc,
        json_schema_extra={"allowed": allowed, **({"secret": secret} if secret else {})},
        validate_default=validate_default,
    )


def section(doc: str) -> Any:
    """A config object: a mapping whose keys all have defaults of their own."""
    return setting({}, f"{doc} Default: every key at its default.", "a mapping", validate_default=True)


# --- value types -------------------------------------------------------------------------------------


def _no_bool(value: object) -> object:
    # pydantic's lax int takes true/false as 1/0; a boolean where a number belongs is a mistake
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


def _flag(value: object) -> object:
    # Pulumi passes top-level booleans as the strings "true"/"false"; pydantic's lax bool would also
    # take "yes", "on", 1, ... which YAML users do not mean for these keys
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, bool):
        return value
    raise PydanticCustomError("bool_type", "Input should be a valid boolean")


def _number_as_text(value: object) -> object:
    # `sharedBuffers: 128` in YAML arrives as a JSON number; PostgreSQL reads a bare number too
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


# GUCs that have a key of their own: setting them in `settings` too would leave two sources of truth
DEDICATED_GUCS: Mapping[str, str] = MappingProxyType(
    {
        "port": "postgres.port",
        "max_connections": "postgres.maxConnections",
        "shared_buffers": "postgres.sharedBuffers",
        "work_mem": "postgres.workMem",
        "maintenance_work_mem": "postgres.maintenanceWorkMem",
        "effective_cache_size": "postgres.effectiveCacheSize",
        "archive_timeout": "backup.archiveTimeout",
    }
)


def _own_key_guc(name: str) -> str:
    if name in DEDICATED_GUCS:
        raise PydanticCustomError(
            "thorbis_dedicated_guc",
            "{name} has a key of its own: set thorbis:{key} instead",
            {"name": name, "key": DEDICATED_GUCS[name]},
        )
    return name


def _guc_value(value: object) -> object:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, dict | list) or value is None:
        raise PydanticCustomError("thorbis_guc_value", "a GUC value must be a string or a number")
    return _number_as_text(value)


def _frozen(settings: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(settings))


def _plain(settings: Mapping[str, str]) -> dict[str, str]:
    return dict(settings)


def _long_enough(secret: SecretStr) -> SecretStr:
    if len(secret.get_secret_value()) < MIN_PASSWORD_LENGTH:
        raise PydanticCustomError(
            "thorbis_secret_short",
            "must be at least {minimum} characters long; choose a longer one",
            {"minimum": MIN_PASSWORD_LENGTH},
        )
    return secret


def _postgres_url(secret: SecretStr) -> SecretStr:
    parts = urlsplit(secret.get_secret_value())
    if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
        raise PydanticCustomError(
            "thorbis_dsn",
            "must be a postgres:// or postgresql:// URL with a host, "
            "e.g. postgresql://user:password@db.example.com:5432/thorbis",
        )
    return secret


Int = Annotated[int, BeforeValidator(_no_bool)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Port = Annotated[Int, Field(ge=1024, le=65535)]
PgMemory = Annotated[str, BeforeValidator(_number_as_text), StringConstraints(pattern=r"^\d+(kB|MB|GB|TB)?$")]
PgDuration = Annotated[str, BeforeValidator(_number_as_text), StringConstraints(pattern=r"^\d+(us|ms|s|min|h|d)?$")]
RedisMemory = Annotated[str, BeforeValidator(_number_as_text), StringConstraints(pattern=r"(?i)^\d+(k|kb|m|mb|g|gb)?$")]
Identifier = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]
#: The JWT claim that names the caller's company, unless thorbis:companyClaim says another.
DEFAULT_COMPANY_CLAIM = "company_id"
ClaimPath = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")]
GucName = Annotated[str, StringConstraints(pattern=GUC_NAME_PATTERN), AfterValidator(_own_key_guc)]
GucValue = Annotated[str, BeforeValidator(_guc_value)]
GucSettings = Annotated[Mapping[GucName, GucValue], AfterValidator(_frozen), PlainSerializer(_plain)]
ImageRef = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-zA-Z0-9_.\-/:@]*$")]
Password = Annotated[SecretStr, AfterValidator(_long_enough)]
PostgresUrl = Annotated[SecretStr, AfterValidator(_postgres_url)]

#: Each replica is a whole copy of the database on the same host or Docker engine, and a WAL sender of the
#: primary: past this, more copies cost more than they spread.
MAX_REPLICAS = 8
PORT_ALLOWED = "an integer port from 1024 to 65535"
PG_MEMORY_ALLOWED = "a PostgreSQL memory size: digits with an optional unit kB, MB, GB or TB, e.g. 128MB"


class Settings(BaseModel):
    """Base of every config object: immutable, camelCase keys, unknown keys rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=True,
        frozen=True,
        extra="forbid",
        # our messages come from `.errors()`; pydantic's own text must never print a value (secrets)
        hide_input_in_errors=True,
    )


# --- sections ----------------------------------------------------------------------------------------


class PostgresSettings(Settings):
    """`thorbis:postgres`: the primary PostgreSQL server."""

    port: Port = setting(5432, "TCP port of the primary. Default 5432.", PORT_ALLOWED)
    database: Identifier = setting(
        "thorbis",
        "Name of the application database. Default thorbis.",
        "a lower-case PostgreSQL identifier: [a-z_] then up to 62 of [a-z0-9_]",
    )
    max_connections: Annotated[Int, Field(ge=10, le=10000)] = setting(
        200, "max_connections of every server. Default 200.", "an integer from 10 to 10000"
    )
    shared_buffers: PgMemory = setting("128MB", "shared_buffers. Default 128MB.", PG_MEMORY_ALLOWED)
    work_mem: PgMemory = setting("4MB", "work_mem. Default 4MB.", PG_MEMORY_ALLOWED)
    maintenance_work_mem: PgMemory = setting("64MB", "maintenance_work_mem. Default 64MB.", PG_MEMORY_ALLOWED)
    effective_cache_size: PgMemory = setting("512MB", "effective_cache_size. Default 512MB.", PG_MEMORY_ALLOWED)
    settings: GucSettings = setting(
        {},
        "Further postgresql.conf settings, GUC name to value, applied to every server. Default {}.",
        "a mapping of GUC names (matching ^[a-z_][a-z0-9_.]*$) to string or number values that this host's "
        "PostgreSQL accepts (checked at preview), none of those the stack sets itself (config/gucs.py OWNED_GUCS)",
        validate_default=True,
    )


class ReplicasSettings(Settings):
    """`thorbis:replicas`: streaming replicas of the primary."""

    count: Annotated[Int, Field(ge=0, le=MAX_REPLICAS)] = setting(
        0, "Number of streaming replicas; at least 1 on prod. Default 0.", f"an integer from 0 to {MAX_REPLICAS}"
    )
    base_port: Port | None = setting(
        None,
        "Port of replica 0; replica i listens on basePort + i. Default thorbis:postgres.port + 1. Unused with "
        "thorbis:ha (the replicas are Patroni nodes then, on thorbis:ha.basePort).",
        PORT_ALLOWED,
    )


class PgBouncerSettings(Settings):
    """`thorbis:pgbouncer`: the connection pooler: database `<database>` is the write pool (the primary),
    `<database>_read` the read pool (the streaming replicas, or the primary when none streams). The pool
    settings apply to each pool (database and user)."""

    port: Port = setting(6432, "TCP port of PgBouncer. Default 6432.", PORT_ALLOWED)
    max_client_conn: Annotated[Int, Field(ge=1)] = setting(1000, "max_client_conn. Default 1000.", "an integer >= 1")
    default_pool_size: Annotated[Int, Field(ge=1)] = setting(
        25, "default_pool_size, per database and user. Default 25.", "an integer >= 1"
    )
    reserve_pool_size: Annotated[Int, Field(ge=0)] = setting(5, "reserve_pool_size. Default 5.", "an integer >= 0")
    reserve_pool_timeout: Annotated[Int, Field(ge=0)] = setting(
        3, "reserve_pool_timeout in seconds. Default 3.", "an integer number of seconds >= 0"
    )
    max_db_connections: Annotated[Int, Field(ge=0)] = setting(
        0, "max_db_connections; 0 means unlimited. Default 0.", "an integer >= 0 (0 = unlimited)"
    )
    min_pool_size: Annotated[Int, Field(ge=0)] = setting(
        0,
        "min_pool_size: server connections each pool keeps open even when idle (the review's 10). Default 0.",
        "an integer >= 0, at most defaultPoolSize",
    )
    server_login_retry: Annotated[Int, Field(ge=1, le=60)] = setting(
        1,
        "server_login_retry in seconds: how long a pool waits after a failed server login. PgBouncer's own "
        "default, 15, would shut a read pool for 15 s after a replica stops; the router re-points it within "
        "routeCheckMs. Default 1.",
        "an integer number of seconds from 1 to 60",
    )
    pool_mode: PoolMode = setting("transaction", "pool_mode. Default transaction.", one_of(PoolMode))
    read_max_lag_bytes: Annotated[Int, Field(ge=0)] = setting(
        16 * 1024 * 1024,
        "A replica whose replay is more than this many bytes of WAL behind the primary leaves the read pool "
        "(the database `<database>_read`) until it catches up. Default 16777216 (16 MiB).",
        "an integer number of bytes >= 0",
    )
    route_check_ms: Annotated[Int, Field(ge=100, le=60000)] = setting(
        500,
        "How often the read router checks every server and re-points PgBouncer's slots, in milliseconds "
        "(platform local). Default 500.",
        "an integer number of milliseconds from 100 to 60000",
    )


class RedisSettings(Settings):
    """`thorbis:redis`: the cache."""

    port: Port = setting(6379, "TCP port of Redis. Default 6379.", PORT_ALLOWED)
    maxmemory: RedisMemory = setting(
        "256mb",
        "maxmemory. Default 256mb.",
        "a Redis memory size: digits with an optional unit k, kb, m, mb, g or gb, e.g. 256mb",
    )
    maxmemory_policy: EvictionPolicy = setting(
        "allkeys-lru", "maxmemory-policy. Default allkeys-lru.", one_of(EvictionPolicy)
    )
    persistence: Flag = setting(False, "Keep data across restarts (append-only file). Default false.", "true or false")


CACHE_FAMILY_PATTERN = r"^[a-z][a-z0-9_]*(:[a-z][a-z0-9_]*)*:\*$"
CacheFamily = Annotated[str, StringConstraints(pattern=CACHE_FAMILY_PATTERN)]
TierName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-zA-Z0-9]{0,39}$")]


class CacheTierSettings(Settings):
    """One cache tier: how long its entries live and which key families it holds."""

    ttl_seconds: Annotated[Int, Field(ge=1, le=7 * 86400)] = setting(
        ...,
        "Time to live of the tier's entries, in seconds. Required: no default.",
        "an integer number of seconds from 1 to 604800",
    )
    families: Annotated[list[CacheFamily], Field(min_length=1)] = setting(
        ...,
        "Key families, written as the review does: 'customers:*', 'jobs:status:*'. Required: no default.",
        "a non-empty list of key families: lower-case words joined by ':' and ending in ':*', e.g. 'jobs:status:*'",
    )


def _review_tiers() -> dict[str, Any]:
    return {
        "shortLived": {"ttlSeconds": 300, "families": ["schedules:*", "jobs:status:*"]},
        "mediumLived": {"ttlSeconds": 3600, "families": ["customers:*", "price_book:*", "equipment:*"]},
        "longLived": {"ttlSeconds": 86400, "families": ["companies:*", "users:preferences:*", "settings:*"]},
    }


def _one_tier_per_family(tiers: Mapping[str, CacheTierSettings]) -> Mapping[str, CacheTierSettings]:
    seen: dict[str, str] = {}
    for name, tier in tiers.items():
        for family in tier.families:
            if family in seen:
                raise PydanticCustomError(
                    "thorbis_cache_family",
                    "family {family} is in tiers {first} and {second}; a family has one TTL: keep it in one",
                    {"family": family, "first": seen[family], "second": name},
                )
            seen[family] = name
    return tiers


class CacheSettings(Settings):
    """`thorbis:cache`: the cache policy applications follow (published as the `cachePolicy` output and
    read by thorbis_client). Keys are `<keyPrefix>:<company id>:<family>:<key>`: a company's keys never
    name another's."""

    key_prefix: Identifier = setting(
        "thorbis", "First part of every cache key. Default thorbis.", "a lower-case identifier: [a-z_][a-z0-9_]*"
    )
    tiers: Annotated[Mapping[TierName, CacheTierSettings], AfterValidator(_one_tier_per_family)] = setting(
        _review_tiers(),
        "Tiers by name, each {ttlSeconds, families}. Default the review's: shortLived 300 s (schedules:*, "
        "jobs:status:*), mediumLived 3600 s (customers:*, price_book:*, equipment:*), longLived 86400 s "
        "(companies:*, users:preferences:*, settings:*).",
        "a mapping of tier name ([a-z][a-zA-Z0-9]*) to {ttlSeconds: an integer from 1 to 604800, families: a "
        "non-empty list of key families such as 'customers:*' or 'jobs:status:*', each in one tier only}",
        validate_default=True,
    )
    stampede_lock_ms: Annotated[Int, Field(ge=10, le=60000)] = setting(
        3000,
        "How long the one loader of a cold key holds its lock; others wait for its value up to this long, "
        "then read the database themselves. Default 3000.",
        "an integer number of milliseconds from 10 to 60000",
    )
    redis_timeout_ms: Annotated[Int, Field(ge=10, le=10000)] = setting(
        200,
        "Connect and read timeout of a cache call; past it the database answers. Default 200.",
        "an integer number of milliseconds from 10 to 10000",
    )
    redis_retry_ms: Annotated[Int, Field(ge=100, le=600000)] = setting(
        2000,
        "After a failed cache call, the cache is skipped for this long before it is tried again, so Redis "
        "down costs one timeout, not one per read. Default 2000.",
        "an integer number of milliseconds from 100 to 600000",
    )

    def policy(self) -> dict[str, Any]:
        """The published policy: the settings, and each family's TTL (the family without its ':*')."""
        return {
            "keyPrefix": self.key_prefix,
            "tiers": {name: tier.model_dump(by_alias=True) for name, tier in self.tiers.items()},
            "familyTtlSeconds": {
                family.removesuffix(":*"): tier.ttl_seconds for tier in self.tiers.values() for family in tier.families
            },
            "stampedeLockMs": self.stampede_lock_ms,
            "redisTimeoutMs": self.redis_timeout_ms,
            "redisRetryMs": self.redis_retry_ms,
        }


class DockerSettings(Settings):
    """`thorbis:docker`: used on platform docker only, ignored elsewhere."""

    network: Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")] = setting(
        None,
        "Docker network the containers join. Default thorbis-<stack>.",
        "a Docker network name: [a-zA-Z0-9] then [a-zA-Z0-9_.-]",
        validate_default=True,
    )
    postgres_image: ImageRef = setting(
        "postgres:15", "Image of primary and replicas. Default postgres:15.", "a Docker image reference"
    )
    pgbouncer_image: ImageRef = setting(
        "edoburu/pgbouncer:latest",
        "Image of PgBouncer. Default edoburu/pgbouncer:latest.",
        "a Docker image reference",
    )
    redis_image: ImageRef = setting("redis:7", "Image of Redis. Default redis:7.", "a Docker image reference")

    @field_validator("network", mode="before")
    @classmethod
    def _default_network(cls, value: object, info: ValidationInfo) -> object:
        return f"thorbis-{_context(info).stack}" if value is None else value


class PartitioningSettings(Settings):
    """`thorbis:partitioning`: pg_partman's care of the monthly partitioned tables (sql/schema `partition`)."""

    premake: Annotated[Int, Field(ge=1, le=60)] = setting(
        4, "Months of partitions made ahead of today. Default 4.", "an integer from 1 to 60"
    )
    retention_months: Annotated[Int, Field(ge=1)] | None = setting(
        None,
        "Partitions wholly older than this many months are dropped by maintenance; unset keeps every month. "
        "Default unset.",
        "an integer >= 1",
    )


CRON_SCHEDULE_ALLOWED = "a pg_cron schedule: five cron fields ('*/5 * * * *'), '@daily'-style, or '<1-59> seconds'"
CronSchedule = Annotated[
    str,
    StringConstraints(pattern=r"^(@(hourly|daily|weekly|monthly|yearly|annually)|[1-5]?[0-9] seconds|(\S+ +){4}\S+)$"),
    AfterValidator(five_fields),
]
PositiveInt = Annotated[Int, Field(ge=1)]


class JobsSettings(Settings):
    """`thorbis:jobs`: the pg_cron jobs of sql/jobs.yaml (maintenance, refresh, retention)."""

    schedules: Mapping[str, CronSchedule] = setting(
        {}, "Schedule by job name, replacing the one in sql/jobs.yaml. Default: the file's.", CRON_SCHEDULE_ALLOWED
    )
    parameters: Mapping[str, PositiveInt] = setting(
        {},
        "Values of the jobs' parameters (webhookLogRetentionDays, retentionBatchSize, ...), replacing the "
        "defaults in sql/jobs.yaml. Default: the file's.",
        "a mapping of parameter name to an integer >= 1",
    )
    #: Where the settings were validated: sql/jobs.yaml is read from there once, when first needed.
    _context: SettingsContext = PrivateAttr()

    @field_validator("schedules", "parameters", mode="after")
    @classmethod
    def _known(cls, value: Mapping[str, object], info: ValidationInfo) -> Mapping[str, object]:
        declared = _context(info).declared_jobs
        known = declared.job_names if info.field_name == "schedules" else set(declared.parameters)
        unknown = sorted(set(value) - known)
        if unknown:
            raise PydanticCustomError(
                "thorbis_unknown_name",
                "{unknown} not in sql/jobs.yaml; known: {known}",
                {"unknown": ", ".join(unknown), "known": ", ".join(sorted(known))},
            )
        return value

    @model_validator(mode="after")
    def _keep_context(self, info: ValidationInfo) -> JobsSettings:
        self._context = _context(info)
        return self

    def resolved(self) -> list[JobData]:
        """The jobs of sql/jobs.yaml with this stack's schedules and parameters."""
        return self._context.declared_jobs.resolved(self.schedules, self.parameters)


OS_CRON_ALLOWED = "an OS cron schedule: five cron fields ('30 2 * * *') or '@daily'-style"
OsCronSchedule = Annotated[
    str,
    StringConstraints(pattern=r"^(@(hourly|daily|weekly|monthly|yearly|annually)|(\S+ +){4}\S+)$"),
    AfterValidator(five_fields),
]


_SECONDS = {"s": 1, "min": 60, "h": 3600}
ARCHIVE_TIMEOUT_RANGE = (1, 3600)


def _archive_timeout(value: str) -> str:
    number, unit = re.fullmatch(r"(\d+)(\D*)", value).groups()  # type: ignore[union-attr]  # the pattern ran
    seconds = int(number) * _SECONDS[unit or "s"]
    low, high = ARCHIVE_TIMEOUT_RANGE
    if not low <= seconds <= high:
        raise PydanticCustomError(
            "thorbis_archive_timeout",
            "must be from {low} s to {high} s; 0 would turn it off and leave the loss unbounded",
            {"low": low, "high": high},
        )
    return f"{seconds}s"  # the form PostgreSQL reports, so the live value compares equal


ArchiveTimeout = Annotated[
    str,
    BeforeValidator(_number_as_text),
    StringConstraints(pattern=r"^\d+(s|min|h)?$"),
    AfterValidator(_archive_timeout),
]


def _backup_directory(value: object, info: ValidationInfo) -> object:
    if value is None:
        return None  # the stack's <stateDir>/backups, made on first use
    if isinstance(value, str) and not value.strip():
        raise PydanticCustomError("thorbis_empty_path", "must not be empty; give a directory path or remove the key")
    if not isinstance(value, str | Path):
        return value  # pydantic reports the wrong type
    path = Path(value).expanduser()
    return path if path.is_absolute() else (_context(info).project_root / path).resolve()


class BackupSettings(Settings):
    """`thorbis:backup`: pgBackRest base backups and continuous WAL archiving of the primary (platform local).

    Backups are taken by `scripts/backup STACK` (pgBackRest runs as an OS command, which pg_cron cannot
    start): run it from the OS's cron or a systemd timer at `schedule`.
    """

    enabled: Flag = setting(
        True,
        "Archive WAL continuously and keep base backups with pgBackRest; used on platform local. Default true.",
        "true or false",
    )
    directory: Annotated[Path | None, BeforeValidator(_backup_directory)] = setting(
        None,
        "The pgBackRest repository, relative to the project root unless absolute; a directory given here must "
        "exist and be writable by the postgres OS user (a missing mount is never replaced by a local directory). "
        "Default <stateDir>/backups, made when missing.",
        "a non-empty directory path",
    )
    retention: Annotated[Int, Field(ge=1, le=100)] = setting(
        2,
        "Full backups kept (repo1-retention-full); WAL older than the oldest kept backup is expired. Default 2.",
        "an integer from 1 to 100",
    )
    schedule: OsCronSchedule = setting(
        "30 2 * * *",
        "When the OS cron or systemd timer runs `scripts/backup STACK` (pg_cron cannot run pgBackRest). "
        "Default 30 2 * * * (daily at 02:30).",
        OS_CRON_ALLOWED,
    )
    archive_timeout: ArchiveTimeout = setting(
        "30s",
        "The bound on what a crash that takes the primary's host loses: WAL is archived at least this often "
        "when there were writes (archive_timeout forces a switch to a new segment, which is pushed to the "
        "repository at once). Commits of the last archiveTimeout (plus the seconds one push takes) before the "
        "crash may be lost; everything older is restored. Shorter costs repository space: each switch archives "
        "one 16 MB segment, mostly zeros, which pgBackRest compresses. Default 30s.",
        "a duration from 1 s to 1 h: digits with an optional unit s, min or h (a bare number is seconds), e.g. 30s",
    )
    restore_on_provision: Flag = setting(
        True,
        "When the primary's data directory is missing and the repository holds a backup of this stack, restore "
        "it (replaying archived WAL to the latest point) instead of initialising an empty server. Default true.",
        "true or false",
    )

    @property
    def archive_timeout_seconds(self) -> int:
        return int(self.archive_timeout.removesuffix("s"))

    def repository(self, state_dir: Path) -> Path:
        """Where the backups of a stack whose state lives in `state_dir` go."""
        return self.directory if self.directory is not None else state_dir / "backups"


class HaSettings(Settings):
    """`thorbis:ha`: high availability on platform local: the primary and the replicas become the nodes of one
    Patroni cluster whose leader lock lives in etcd; HAProxy routes the write endpoint (thorbis:postgres.port)
    to whichever node leads and the read endpoint (readPort) to the streaming replicas. Failover is automatic.

    Ports: node i listens on basePort + 2i (PostgreSQL) and basePort + 2i + 1 (Patroni's REST API); etcd
    member j on etcdBasePort + 2j (clients) and etcdBasePort + 2j + 1 (peers).
    """

    mode: Literal["off", "patroni"] = setting(
        "off",
        "off: a primary and replicas, failover by hand; patroni: automatic failover. Default off.",
        'one of "off", "patroni"',
    )
    synchronous: Flag = setting(
        True,
        "Patroni's synchronous mode: a commit returns once a standby has it, and only that standby is promoted, "
        "so a failover loses no acknowledged commit (RPO 0); costs a round trip per commit. With no standby "
        "left, writes go on unprotected rather than stop. Default true.",
        "true or false",
    )
    etcd_members: Annotated[Int, Field(ge=1, le=7)] = setting(
        3,
        "Members of the etcd cluster (one per machine in production); an odd number: 3 survive the loss of 1, "
        "5 of 2. Default 3.",
        "an odd integer from 1 to 7",
    )
    base_port: Port | None = setting(
        None,
        "First port of the nodes (PostgreSQL and REST API each). Default thorbis:postgres.port + 10.",
        PORT_ALLOWED,
    )
    etcd_base_port: Port | None = setting(
        None, "First port of the etcd members (client and peer each). Default thorbis:postgres.port + 40.", PORT_ALLOWED
    )
    read_port: Port | None = setting(
        None,
        "Port of the read endpoint (the streaming replicas; the leader when none runs). "
        "Default thorbis:postgres.port + 1.",
        PORT_ALLOWED,
    )
    ttl: Annotated[Int, Field(ge=20, le=600)] = setting(
        20,
        "Seconds a leader lock lives without renewal: how long a node that vanished whole keeps its lock before "
        "a failover. Default 20 (Patroni's minimum).",
        "an integer from 20 to 600",
    )
    loop_wait: Annotated[Int, Field(ge=1, le=60)] = setting(
        2, "Seconds between two runs of each node's Patroni loop. Default 2.", "an integer from 1 to 60"
    )
    retry_timeout: Annotated[Int, Field(ge=3, le=300)] = setting(
        8,
        "Seconds etcd and PostgreSQL calls are retried before a leader demotes itself; loopWait + 2 x "
        "retryTimeout must not exceed ttl. Default 8.",
        "an integer from 3 to 300",
    )

    @field_validator("etcd_members", mode="after")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise PydanticCustomError(
                "thorbis_even_quorum",
                "{value} members tolerate no more failures than {fewer}: use an odd number",
                {"value": value, "fewer": value - 1},
            )
        return value

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


# --- the whole stack ---------------------------------------------------------------------------------

SECRET_ALLOWED = f"a secret string of at least {MIN_PASSWORD_LENGTH} characters"


class StackSettings(Settings):
    """Everything under `thorbis:` for one stack, validated; build it with `parse_settings`."""

    stack: str = Field(description="Name of the Pulumi stack; not a config key.")
    platform: PlatformName = setting(
        "local",
        "Where the servers run: local processes, Docker containers, or an external server. Default local.",
        one_of(PlatformName),
    )
    state_dir: Path = setting(
        None,
        "Directory where local servers keep their data, relative to the project root unless absolute. "
        "Default .state/stacks/<stack>.",
        "a non-empty directory path",
        validate_default=True,
    )
    allow_data_loss: Flag = setting(
        False, "Allow changes that drop or recreate data; never on prod. Default false.", "true or false"
    )
    lock_timeout: PgDuration = setting(
        "5s",
        "lock_timeout of schema changes. Default 5s.",
        "a PostgreSQL duration: digits with an optional unit us, ms, s, min, h or d, e.g. 5s or 500ms",
    )
    statement_timeout: PgDuration = setting(
        "5s",
        "statement_timeout of schema changes that hold a lock blocking writers (online builds, validations "
        "and backfills have none). Default 5s.",
        "a PostgreSQL duration: digits with an optional unit us, ms, s, min, h or d, e.g. 5s or 500ms",
    )
    company_claim: ClaimPath = setting(
        DEFAULT_COMPANY_CLAIM,
        "Where the caller's company id is in the JWT claims that applications set per transaction "
        "(request.jwt.claims): a top-level claim, or a dotted path such as app_metadata.company_id (Supabase "
        "puts custom claims there, or a custom access-token hook puts them where it likes). Default company_id.",
        "claim names of letters, digits and _ joined by dots, e.g. company_id or app_metadata.company_id",
    )
    postgres: PostgresSettings = section("The primary PostgreSQL server (PostgresSettings).")
    replicas: ReplicasSettings = section("Streaming replicas of the primary (ReplicasSettings).")
    pgbouncer: PgBouncerSettings = section("The PgBouncer pooler (PgBouncerSettings).")
    redis: RedisSettings = section("The Redis cache (RedisSettings).")
    cache: CacheSettings = section("The cache policy: tiers, TTLs, key families (CacheSettings).")
    docker: DockerSettings = section("Docker settings, used on platform docker only (DockerSettings).")
    partitioning: PartitioningSettings = section("pg_partman's premake and retention (PartitioningSettings).")
    jobs: JobsSettings = section("Schedules and parameters of the pg_cron jobs (JobsSettings).")
    backup: BackupSettings = section("pgBackRest backups and WAL archiving of the primary (BackupSettings).")
    ha: HaSettings = section("High availability: Patroni, etcd and HAProxy on platform local (HaSettings).")
    postgres_password: Password | None = setting(
        None,
        "Password of the postgres superuser; required on local and docker. Secret; default unset.",
        SECRET_ALLOWED,
        secret="server",
    )
    replication_password: Password | None = setting(
        None,
        "Password of the replication role; required on local and docker. Secret; default unset.",
        SECRET_ALLOWED,
        secret="server",
    )
    pgbouncer_auth_password: Password | None = setting(
        None,
        "Password of PgBouncer's auth_user; required on local and docker. Secret; default unset.",
        SECRET_ALLOWED,
        secret="server",
    )
    redis_password: Password | None = setting(
        None,
        "Password of Redis; required on local and docker, optional on external. Secret; default unset.",
        SECRET_ALLOWED,
        secret="server",
    )
    authenticator_password: Password | None = setting(
        None,
        "Password of `authenticator`, the role applications log in as (they then SET LOCAL ROLE authenticated); "
        "required on local and docker; on external only where the server lacks the role (Supabase has it, and "
        "its password is never changed). Secret; default unset.",
        SECRET_ALLOWED,
        secret="role",
    )
    reporting_password: Password | None = setting(
        None,
        "Password of `reporting`, the read-only role for reports and BI tools; required on every platform. "
        "Secret; default unset.",
        SECRET_ALLOWED,
        secret="role",
    )
    external_dsn: PostgresUrl | None = setting(
        None,
        "URL of the server, postgres://...; required on platform external, ignored elsewhere. Secret; default unset.",
        "a secret postgres:// or postgresql:// URL",
        secret="dsn",
    )

    @field_validator("state_dir", mode="before")
    @classmethod
    def _resolve_state_dir(cls, value: object, info: ValidationInfo) -> object:
        context = _context(info)
        if value is None:
            value = Path(".state") / "stacks" / context.stack
        if isinstance(value, str) and not value.strip():
            raise PydanticCustomError("thorbis_empty_path", "must not be empty; give a directory path")
        if not isinstance(value, str | Path):
            return value  # pydantic reports the wrong type
        path = Path(value).expanduser()
        return path if path.is_absolute() else (context.project_root / path).resolve()

    @property
    def is_prod(self) -> bool:
        """True on the production stack, where data loss is never allowed and replicas are required."""
        return self.stack == PROD_STACK

    @property
    def replica_ports(self) -> list[int]:
        """Port of each replica, in order: basePort + i (basePort defaults to postgres.port + 1)."""
        base = self.replicas.base_port if self.replicas.base_port is not None else self.postgres.port + 1
        return [base + index for index in range(self.replicas.count)]

    @property
    def ha_nodes(self) -> list[HaNode]:
        """The Patroni nodes when ha is on: the primary and each replica of the stack."""
        if not self.ha.enabled:
            return []
        base = self.ha.base_port if self.ha.base_port is not None else self.postgres.port + 10
        return [HaNode(f"node-{i}", base + 2 * i, base + 2 * i + 1) for i in range(self.replicas.count + 1)]

    @property
    def etcd_peers(self) -> list[EtcdPeer]:
        """The etcd members when ha is on."""
        if not self.ha.enabled:
            return []
        base = self.ha.etcd_base_port if self.ha.etcd_base_port is not None else self.postgres.port + 40
        return [EtcdPeer(f"etcd-{j}", base + 2 * j, base + 2 * j + 1) for j in range(self.ha.etcd_members)]

    @property
    def ha_read_port(self) -> int:
        return self.ha.read_port if self.ha.read_port is not None else self.postgres.port + 1

    @property
    def all_ports(self) -> dict[str, int]:
        """Every port the stack's servers listen on, by the config key that sets it."""
        ports = {f"{NAMESPACE}:postgres.port": self.postgres.port}
        if self.ha.enabled:
            ports[f"{NAMESPACE}:ha.readPort"] = self.ha_read_port
            for i, node in enumerate(self.ha_nodes):
                ports[f"{NAMESPACE}:ha.basePort+{2 * i}"] = node.port
                ports[f"{NAMESPACE}:ha.basePort+{2 * i + 1}"] = node.rest_port
            for j, peer in enumerate(self.etcd_peers):
                ports[f"{NAMESPACE}:ha.etcdBasePort+{2 * j}"] = peer.client_port
                ports[f"{NAMESPACE}:ha.etcdBasePort+{2 * j + 1}"] = peer.peer_port
        else:
            ports.update({replica_port_key(i): port for i, port in enumerate(self.replica_ports)})
        ports[f"{NAMESPACE}:pgbouncer.port"] = self.pgbouncer.port
        ports[f"{NAMESPACE}:redis.port"] = self.redis.port
        return ports


@dataclass(frozen=True)
class HaNode:
    """A Patroni node of the stack: its name, PostgreSQL port and REST API port."""

    name: str
    port: int
    rest_port: int


@dataclass(frozen=True)
class EtcdPeer:
    """An etcd member of the stack: its name, client port and peer port."""

    name: str
    client_port: int
    peer_port: int


def replica_port_key(index: int) -> str:
    """How replica `index`'s port is named in messages: the key that sets it, plus the offset."""
    return f"{NAMESPACE}:replicas.basePort+{index}"


def attribute_of(key: str) -> str:
    """The StackSettings attribute of a top-level config key: `postgresPassword` -> `postgres_password`."""
    for name, info in StackSettings.model_fields.items():
        if info.alias == key:
            return name
    raise KeyError(f"{key} is not a key of {NAMESPACE}: (allowed: {', '.join(CONFIG_KEYS)})")


def _field_alias(name: str) -> str:
    alias = StackSettings.model_fields[name].alias
    return alias if alias is not None else name


def _is_section(name: str) -> bool:
    annotation = StackSettings.model_fields[name].annotation
    return isinstance(annotation, type) and issubclass(annotation, Settings)


CONFIG_KEYS: tuple[str, ...] = tuple(_field_alias(name) for name in StackSettings.model_fields if name != "stack")
"""Every key allowed under `thorbis:`, as written in the stack file."""
OBJECT_KEYS: frozenset[str] = frozenset(_field_alias(n) for n in StackSettings.model_fields if _is_section(n))
"""Keys whose value is a mapping (Pulumi passes them as JSON strings)."""


def _secret_keys(*of: SecretOf) -> tuple[str, ...]:
    """The keys whose field is marked as a secret of `of`, in declaration order."""
    marked = {name: (info.json_schema_extra or {}) for name, info in StackSettings.model_fields.items()}
    return tuple(
        _field_alias(name) for name, extra in marked.items() if isinstance(extra, dict) and extra.get("secret") in of
    )


SERVER_PASSWORD_KEYS: tuple[str, ...] = _secret_keys("server")
"""Secrets the servers need on platforms local and docker."""
ROLE_PASSWORD_KEYS: tuple[str, ...] = _secret_keys("role")
"""Secrets of the database's login roles (sql/access.yaml names them), needed on every platform."""
PASSWORD_KEYS: tuple[str, ...] = (*SERVER_PASSWORD_KEYS, *ROLE_PASSWORD_KEYS)
"""Every password a stack on platform local or docker is given."""
SECRET_KEYS: frozenset[str] = frozenset(_secret_keys("server", "role", "dsn"))
"""Keys that must be set with `pulumi config set --secret`."""
