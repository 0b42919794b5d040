"""Lines for whoever runs `pulumi up`, from inside the provider: sent to the engine's Log service and shown
under the resource being worked on. The engine hides what a provider plugin writes to stdout and stderr
(it shows it only when the plugin crashes), so a print would never reach the user."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache

import grpc
from pulumi.runtime.proto import engine_pb2, engine_pb2_grpc

_engine_address: list[str] = []
_resource: ContextVar[str] = ContextVar("resource", default="")


def connect(engine_address: str) -> None:
    """The engine's address, as the engine passes it to the plugin (its first argument)."""
    _engine_address[:] = [engine_address]


@cache
def _engine(address: str) -> engine_pb2_grpc.EngineStub:
    return engine_pb2_grpc.EngineStub(grpc.insecure_channel(address))


@contextmanager
def about(urn: str) -> Iterator[None]:
    """Lines written inside the block are shown under the resource `urn` (asyncio.to_thread carries it)."""
    token = _resource.set(urn)
    try:
        yield
    finally:
        _resource.reset(token)


def info(message: str) -> None:
    _log(engine_pb2.INFO, message)


def warn(message: str) -> None:
    _log(engine_pb2.WARNING, message)


def status(message: str) -> None:
    """A passing note: shown while the resource is worked on, left out of the summary at the end."""
    _log(engine_pb2.INFO, message, ephemeral=True)


def _log(severity: engine_pb2.LogSeverity.ValueType, message: str, ephemeral: bool = False) -> None:
    if not _engine_address:  # outside the engine (the kinds driven directly, by tests and scripts)
        print(f"thorbisdb: {message}", file=sys.stderr, flush=True)
        return
    request = engine_pb2.LogRequest(severity=severity, message=message, urn=_resource.get(), ephemeral=ephemeral)
    try:
        _engine(_engine_address[0]).Log(request, timeout=10)
    except grpc.RpcError:  # the engine is going away: the line must not fail the work it describes
        print(f"thorbisdb: {message}", file=sys.stderr, flush=True)
