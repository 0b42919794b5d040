"""The e2e tests' stacks: a module's own stack with replicas, and one shared database stack (testbed/stacks.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed.stacks import LiveStack, throwaway_stack


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """A stack with two replicas, for the module to bring up itself."""
    with throwaway_stack(tmp_path_factory.mktemp("backend"), "e2e", replicas=2) as live:
        yield live


@pytest.fixture(scope="session")
def database_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """A stack without replicas for the tests of what is inside the database, shared by their modules:
    up before the first, destroyed after the last."""
    with throwaway_stack(tmp_path_factory.mktemp("backend"), "e2e-db") as live:
        assert live.stack.up().summary.result == "succeeded"
        yield live
