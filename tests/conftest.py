"""Test-wide set-up: the environment of scripts/pulumi-env.sh, so tests use the project's engine."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from testbed.workers import group_for_workers

ROOT = Path(__file__).resolve().parents[1]


def _load_pulumi_env() -> None:
    dump = subprocess.run(
        ["bash", "-c", f'source "{ROOT}/scripts/pulumi-env.sh" && env -0'],
        check=True,
        capture_output=True,
    ).stdout.decode()
    for entry in filter(None, dump.split("\0")):
        key, _, value = entry.partition("=")
        os.environ[key] = value


_load_pulumi_env()


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups this sets
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    group_for_workers(items)
