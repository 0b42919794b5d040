"""How `make test` shares the suite between parallel workers (tests/conftest.py applies it)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import pytest


def group_for_workers(items: list[pytest.Item]) -> None:
    """`make test` runs on parallel workers (pytest-xdist, `--dist loadgroup`), each taking whole groups.
    A group is a module, or the modules sharing a session fixture of ours (a stack brought up once: on a
    second worker it would be brought up again). Groups marked `long` run first, then the e2e ones, so that
    no worker is left with a long group after the other is done; the order is kept within a rank."""
    group_of = _groups(items)
    rank: dict[str, int] = {}
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        group = group_of[_module(item)]
        rank[group] = min(rank.get(group, 2), _rank(item))
        first.setdefault(group, index)
    items.sort(key=lambda item: (rank[group_of[_module(item)]], first[group_of[_module(item)]]))
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group_of[_module(item)]))


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def _rank(item: pytest.Item) -> int:
    return 0 if item.get_closest_marker("long") else 1 if item.get_closest_marker("e2e") else 2


def _shared_fixtures(item: pytest.Item) -> set[str]:
    """The session-scoped fixtures of the project's own the item uses (not those of pytest or its plugins)."""
    if not isinstance(item, pytest.Function):
        return set()
    definitions = item._fixtureinfo.name2fixturedefs  # no public API gives the scopes of a test's fixtures
    return {
        name
        for name, defs in definitions.items()
        if defs[-1].scope == "session" and _of_the_project(defs[-1].func, item.config.rootpath)
    }


def _of_the_project(function: Callable[..., object], root: Path) -> bool:
    source = Path(inspect.getfile(function))
    return source.is_relative_to(root) and "site-packages" not in source.parts


def _groups(items: list[pytest.Item]) -> dict[str, str]:
    """Each module's group: modules joined through the session fixtures they share (union-find)."""
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        while parent.setdefault(node, node) != node:
            node = parent[node]
        return node

    for item in items:
        for fixture in _shared_fixtures(item):
            parent[root(_module(item))] = root(f"shared:{fixture}")
    return {_module(item): root(_module(item)) for item in items}
