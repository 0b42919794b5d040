"""Bad configuration stops `pulumi up` with an error naming the key, before anything is created."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pulumi.automation as auto
import pytest

from components.connection import LOOPBACK
from testbed.support import copy_project, free_ports

pytestmark = pytest.mark.e2e
PROJECT_PARTS = ("Pulumi.yaml", "__main__.py", "components", "config", "provider")
GOOD_SECRETS = {
    "postgresPassword": "a-long-enough-password-1",
    "replicationPassword": "a-long-enough-password-2",
    "pgbouncerAuthPassword": "a-long-enough-password-3",
    "redisPassword": "a-long-enough-password-4",
    "authenticatorPassword": "a-long-enough-password-5",
    "reportingPassword": "a-long-enough-password-6",
}


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A copy of the program (so stacks named like ours do not touch the committed Pulumi.<stack>.yaml)."""
    yield copy_project(tmp_path / "project", parts=PROJECT_PARTS)


def stack_with(project: Path, name: str, values: dict[str, str], state_dir: Path) -> auto.Stack:
    backend = project.parent / "backend"
    backend.mkdir(exist_ok=True)
    stack = auto.create_stack(
        name,
        work_dir=str(project),
        opts=auto.LocalWorkspaceOptions(env_vars={"PULUMI_BACKEND_URL": f"file://{backend}"}),
    )
    stack.set_all_config({f"thorbis:{k}": auto.ConfigValue(v, secret=True) for k, v in GOOD_SECRETS.items()})
    stack.set_all_config(
        {key: auto.ConfigValue(value) for key, value in {"thorbis:stateDir": str(state_dir), **values}.items()},
        path=True,
    )
    return stack


def declared_types(stack: auto.Stack) -> set[str]:
    return {resource["type"] for resource in (stack.export_stack().deployment or {}).get("resources") or []}


def refused(stack: auto.Stack) -> str:
    with pytest.raises(auto.CommandError) as failure:
        stack.up()
    return str(failure.value)


def test_prod_rules_are_enforced_before_any_change(project: Path, tmp_path: Path) -> None:
    ports = free_ports(4)
    state_dir = tmp_path / "state"
    stack = stack_with(
        project,
        "prod",
        {
            "thorbis:platform": "local",
            "thorbis:allowDataLoss": "true",
            "thorbis:replicas.count": "0",
            "thorbis:postgres.port": str(ports[0]),
            "thorbis:pgbouncer.port": str(ports[1]),
            "thorbis:redis.port": str(ports[2]),
        },
        state_dir,
    )
    message = refused(stack)
    assert "stack 'prod': thorbis:replicas.count = 0" in message
    assert "thorbis:allowDataLoss" in message
    assert "Traceback" not in message
    assert declared_types(stack) <= {"pulumi:pulumi:Stack"}
    assert not state_dir.exists()


def test_a_port_taken_on_the_host_is_named(project: Path, tmp_path: Path) -> None:
    ports = free_ports(3)
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        stack = stack_with(
            project,
            "dev",
            {
                "thorbis:postgres.port": str(taken),
                "thorbis:pgbouncer.port": str(ports[0]),
                "thorbis:redis.port": str(ports[1]),
            },
            tmp_path / "state",
        )
        message = refused(stack)
    assert f"thorbis:postgres.port = {taken}" in message
    assert declared_types(stack) <= {"pulumi:pulumi:Stack"}
    assert not (tmp_path / "state").exists()


def test_a_password_in_plain_text_is_refused(project: Path, tmp_path: Path) -> None:
    ports = free_ports(3)
    stack = stack_with(
        project,
        "dev",
        {
            "thorbis:postgres.port": str(ports[0]),
            "thorbis:pgbouncer.port": str(ports[1]),
            "thorbis:redis.port": str(ports[2]),
        },
        tmp_path / "state",
    )
    stack.set_config("thorbis:redisPassword", auto.ConfigValue("typed-in-the-clear-123"))
    message = refused(stack)
    assert "thorbis:redisPassword" in message and "--secret" in message
    assert "typed-in-the-clear-123" not in message
