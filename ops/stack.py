"""Selecting a stack through the Automation API, and its ConnectionSpec (from its `connection` output)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pulumi.automation as auto

from components.connection import ConnectionSpec
from components.outputs import CONNECTION, connection_of

#: The project directory: the clone this package lives in (THORBIS_ROOT when scripts/pulumi-env.sh set it).
ROOT = Path(os.environ.get("THORBIS_ROOT") or Path(__file__).resolve().parents[1])


class ToolError(Exception):
    """The tool could not do its work (no such stack, `pulumi` failed); the message says what to do."""


def open_stack(name: str, work_dir: Path | None = None) -> auto.Stack:
    """The existing stack `name` of the project in `work_dir`, on the backend of PULUMI_BACKEND_URL."""
    directory = work_dir or ROOT
    try:
        return auto.select_stack(name, work_dir=str(directory))
    except auto.StackNotFoundError as error:
        raise ToolError(
            f"no stack {name!r} on backend {os.environ.get('PULUMI_BACKEND_URL', '(default)')}: "
            "check the name and PULUMI_BACKEND_URL, or create it with `make up STACK=...`"
        ) from error
    except auto.CommandError as error:
        raise ToolError(f"could not select stack {name!r} in {directory}: {last_line(str(error))}") from error


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text.strip()


def read_connection(stack: auto.Stack) -> ConnectionSpec:
    """The ConnectionSpec the stack exported (secrets come back in clear to the Automation API)."""
    connection = connection_of(stack.outputs())
    if connection is None:
        raise ToolError(f"stack {stack.name} has no output `{CONNECTION}`: run `pulumi up` on it first")
    return connection


def optional_config(stack: auto.Stack, key: str) -> str | None:
    try:
        return stack.get_config(key).value
    except auto.CommandError:
        return None  # not set on this stack (an external platform has no PgBouncer password)


@dataclass(frozen=True)
class StackAccess:
    """What `verify` reaches a stack with: its ConnectionSpec, and two logins of its config that the
    ConnectionSpec does not hold (passwords never printed)."""

    connection: ConnectionSpec
    pooler_auth_password: str | None = field(default=None, repr=False)
    authenticator_password: str | None = field(default=None, repr=False)


def read_access(stack: auto.Stack) -> StackAccess:
    return StackAccess(
        connection=read_connection(stack),
        pooler_auth_password=optional_config(stack, "thorbis:pgbouncerAuthPassword"),
        authenticator_password=optional_config(stack, "thorbis:authenticatorPassword"),
    )
