"""Typed, validated stack settings: the one place that reads the `thorbis:` Pulumi config."""

from config.errors import ConfigError, Problem
from config.load import load_settings, parse_settings
from config.ports import check_host_ports
from config.settings import (
    PASSWORD_KEYS,
    BackupSettings,
    DockerSettings,
    JobsSettings,
    PartitioningSettings,
    PgBouncerSettings,
    PostgresSettings,
    RedisSettings,
    ReplicasSettings,
    StackSettings,
)

__all__ = [
    "PASSWORD_KEYS",
    "BackupSettings",
    "ConfigError",
    "DockerSettings",
    "JobsSettings",
    "PartitioningSettings",
    "PgBouncerSettings",
    "PostgresSettings",
    "Problem",
    "RedisSettings",
    "ReplicasSettings",
    "StackSettings",
    "check_host_ports",
    "load_settings",
    "parse_settings",
]
