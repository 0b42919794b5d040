"""A program run under Pulumi's mocks, recording its resource graph: type, name, inputs, parent, dependencies."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs

# pulumi.runtime.test is untyped; this names the shape it has (a test body in, a runnable test out)
run_with_mocks: Callable[[Callable[[], pulumi.Output[None]]], Callable[[], None]] = pulumi.runtime.test


@dataclass(frozen=True)
class Created:
    """One `new_resource` call: what the program asked the engine to create."""

    type: str
    name: str
    inputs: dict[str, Any]


@dataclass(frozen=True)
class Wiring:
    """Where a registration sits in the graph: its URN, its parent's, and every URN it depends on."""

    urn: str
    parent: str
    dependencies: frozenset[str]


#: Outputs a resource reports beside its inputs (an image pull's id, ...).
ExtraOutputs = Callable[[Created], dict[str, Any]]


class RecordingMocks(pulumi.runtime.Mocks):
    """Echoes inputs as outputs (plus `extra` ones) and records every call."""

    def __init__(self, extra: ExtraOutputs) -> None:
        self.created: list[Created] = []
        self.extra = extra

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[Any, Any]]:
        created = Created(args.typ, args.name, dict(args.inputs))
        self.created.append(created)
        return f"{args.name}-id", {**args.inputs, **self.extra(created)}

    def call(self, args: MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        raise AssertionError(f"the program calls no provider function, yet called {args.token}")


class WiringMonitor(MockMonitor):
    """The mock monitor, also keeping each registration's parent and dependencies (new_resource sees neither)."""

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.wiring: dict[str, Wiring] = {}

    def RegisterResource(self, request: Any) -> Any:
        urn = self.make_urn(request.parent, request.type, request.name)
        self.wiring[request.name] = Wiring(urn, request.parent, frozenset(request.dependencies))
        return super().RegisterResource(request)  # type: ignore[no-untyped-call]  # pulumi leaves it untyped


def record(
    program: Callable[[], pulumi.Output[None]], stack: str, extra: ExtraOutputs = lambda _: {}
) -> tuple[list[Created], dict[str, Wiring]]:
    """Run `program` under the mocks until every registration has been answered; what it declared."""
    mocks = RecordingMocks(extra)
    monitor = WiringMonitor(mocks)
    # Pulumi's mocks run on the thread's current event loop; an earlier asyncio.run() leaves none set.
    asyncio.set_event_loop(asyncio.new_event_loop())
    pulumi.runtime.set_mocks(mocks, project="thorbis-db", stack=stack, preview=False, monitor=monitor)
    run_with_mocks(program)()
    return mocks.created, monitor.wiring
