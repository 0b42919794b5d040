"""Typed, validated stack settings: the one place that reads the `thorbis:` Pulumi config."""

from config.errors import ConfigError, Problem
from config.load import load_settings, parse_settings
from config.ports import check_host_ports
from config.settings import (
    BackupSpec,
    DockerSpec,
    HaSpec,
    JobsSpec,
    PartitioningSpec,
    PgBouncerSpec,
    PostgresSpec,
    RedisSpec,
    ReplicasSpec,
    StackSettings,
)

__all__ = [
    "BackupSpec",
    "ConfigError",
    "DockerSpec",
    "HaSpec",
    "JobsSpec",
    "PartitioningSpec",
    "PgBouncerSpec",
    "PostgresSpec",
    "Problem",
    "RedisSpec",
    "ReplicasSpec",
    "StackSettings",
    "check_host_ports",
    "load_settings",
    "parse_settings",
]
