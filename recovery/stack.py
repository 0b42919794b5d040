"""A stack of this project, opened through the Automation API, with its validated settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psycopg
import pulumi.automation as auto

from components.connection import ConnectionSpec, Endpoint
from components.platform.local.pgbackrest import Repository
from components.platform.local.platform import backup_repository
from config import StackSettings, parse_settings
from ops.stack import ROOT, ToolError, read_connection


class OperationError(Exception):
    """What an operator must fix before the script can run; the message says what and where."""


@dataclass(frozen=True)
class OpenStack:
    stack: auto.Stack
    settings: StackSettings
    repository: Repository
    connection: ConnectionSpec

    def admin(self, endpoint: Endpoint | None = None) -> psycopg.Connection:
        """The admin connection to the primary (or to `endpoint`, a replica)."""
        return psycopg.connect(**self.connection.conninfo(endpoint), autocommit=True)


def open_stack(name: str, work_dir: Path | None = None) -> OpenStack:
    """The stack `name` of the project in `work_dir` (default: this clone), its config validated as
    `pulumi up` would."""
    project = work_dir or ROOT
    stack = auto.select_stack(name, work_dir=str(project))
    config = stack.get_all_config()
    raw = {key: value.value for key, value in config.items()}
    secret_keys = {key for key, value in config.items() if value.secret}
    settings = parse_settings(name, raw, secret_keys, project)
    repository = backup_repository(settings)
    if repository is None:
        raise OperationError(
            f"stack '{name}': backups are off (platform {settings.platform}, thorbis:backup.enabled "
            f"{str(settings.backup.enabled).lower()}); backups need platform local and thorbis:backup.enabled true"
        )
    try:
        connection = read_connection(stack)
    except ToolError as error:
        raise OperationError(str(error)) from error
    return OpenStack(stack, settings, repository, connection)
