"""The `thorbisdb` provider plugin: Pulumi's resource protocol, served for every Kind of this project.

The engine starts it as `provider/pulumi-resource-thorbisdb`. Each request is routed by its type token
to the Kind that owns it, among those components/registry.py lists (the plugin imports those modules and
nothing of the program: no layer, platform component or config).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from pulumi.provider.experimental.property_value import Computed, PropertyValue
from pulumi.provider.experimental.provider import (
    CheckFailure,
    CheckRequest,
    CheckResponse,
    ConfigureRequest,
    ConfigureResponse,
    CreateRequest,
    CreateResponse,
    DeleteRequest,
    DiffRequest,
    DiffResponse,
    PropertyDiff,
    PropertyDiffKind,
    Provider,
    ReadRequest,
    ReadResponse,
    UpdateRequest,
    UpdateResponse,
)
from pulumi.provider.experimental.server import main as serve
from pulumi.runtime.rpc import UNKNOWN
from pydantic import ValidationError

from components import engine_log
from components.kind import Kind, ProviderError, Spec, Unreachable, reported, wire_names
from components.registry import served_kinds

VERSION = "0.1.0"
#: The inputs an object was last made from, kept beside what `read` observes (which may not be a valid
#: spec: a grant whose privileges were all revoked by hand), so `read` and `delete` know what was declared.
DECLARED = "declaredInputs"
T = TypeVar("T")


def plain(value: PropertyValue) -> Any:
    """A PropertyValue as plain Python: mappings, lists, str, bool, int/float; UNKNOWN when computed."""
    raw = value.value
    if isinstance(raw, Computed) or raw == UNKNOWN:
        return UNKNOWN
    if isinstance(raw, Mapping):
        return {key: plain(item) for key, item in raw.items()}
    if isinstance(raw, Sequence) and not isinstance(raw, str):
        return [plain(item) for item in raw]
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    return raw


def plain_map(values: Mapping[str, PropertyValue]) -> dict[str, Any]:
    return {key: plain(value) for key, value in values.items()}


def property_value(value: Any, secret: bool = False) -> PropertyValue:
    if isinstance(value, PropertyValue):
        return value
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return PropertyValue(value, is_secret=secret)
    if isinstance(value, int | float):
        return PropertyValue(float(value), is_secret=secret)
    if isinstance(value, Mapping):
        return PropertyValue({str(k): property_value(v) for k, v in value.items()}, is_secret=secret)
    if isinstance(value, Sequence):
        return PropertyValue([property_value(v) for v in value], is_secret=secret)
    raise TypeError(f"cannot send a {type(value).__name__} to the engine")


def contains_unknown(value: Any) -> bool:
    if value == UNKNOWN:
        return True
    if isinstance(value, dict):
        return any(contains_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_unknown(v) for v in value)
    return False


def spec_fields(kind: Kind[Any, Any]) -> list[str]:
    """The wire names (camelCase) of a kind's inputs."""
    return list(wire_names(kind.spec_type).values())


def describe(error: ValidationError) -> list[CheckFailure]:
    return [
        CheckFailure(".".join(str(part) for part in problem["loc"]), problem["msg"])
        for problem in error.errors(include_url=False)
    ]


class ThorbisProvider(Provider):
    def __init__(self, kinds: dict[str, Kind[Any, Any]]) -> None:
        self.kinds = kinds

    async def configure(self, request: ConfigureRequest) -> ConfigureResponse:
        """An explicit provider's inputs (the database layer's connection) reach every kind it serves."""
        config = plain_map(request.args)
        for kind in self.kinds.values():
            kind.provider_config = config
        return ConfigureResponse(accept_secrets=True, supports_preview=True, accept_outputs=True, accept_resources=True)

    def kind_of(self, qualified_type: str) -> Kind[Any, Any]:
        token = qualified_type.rsplit("$", 1)[-1]  # the URN's type carries its parents' types before `$`
        if token not in self.kinds:
            raise ProviderError(f"thorbisdb has no resource type {token}; known: {', '.join(sorted(self.kinds))}")
        return self.kinds[token]

    def outputs(self, kind: Kind[Any, Any], values: dict[str, Any]) -> dict[str, PropertyValue]:
        def secret(key: str) -> bool:
            return key in kind.secret_properties or (key == DECLARED and bool(kind.secret_properties))

        return {key: property_value(value, secret(key)) for key, value in values.items()}

    def declared_spec(self, kind: Kind[Any, Any], state: dict[str, Any]) -> Spec:
        """The spec the object was last made from (older states: its input fields)."""
        declared = state.get(DECLARED)
        if not isinstance(declared, dict):
            declared = state
        # an input a newer spec no longer has is left out: the object stays readable and deletable
        spec: Spec = kind.parse({key: value for key, value in declared.items() if key in spec_fields(kind)})
        return spec

    async def run(self, work: Callable[[], T], urn: str = "") -> T:
        """Kinds block on servers and subprocesses: run them off the gRPC event loop (what they log is
        shown under `urn`)."""
        with engine_log.about(urn):
            return await asyncio.to_thread(work)

    async def check(self, request: CheckRequest) -> CheckResponse:
        kind = self.kind_of(request.type)
        news = plain_map(request.new_inputs)
        if contains_unknown(news):
            return CheckResponse(inputs=request.new_inputs)
        try:
            spec: Spec = kind.parse(news)
        except ValidationError as error:
            return CheckResponse(failures=describe(error))
        olds = plain_map(request.old_inputs)
        if olds and not contains_unknown(olds):
            refused = kind.unsupported(olds, spec)
            if not kind.allows_data_loss(spec):
                refused += [
                    f"{loss}: refused because this stack does not allow data loss (thorbis:allowDataLoss)"
                    for loss in kind.data_loss(olds, spec)
                ]
            if refused:
                return CheckResponse(failures=[CheckFailure(request.name, problem) for problem in refused])
        return CheckResponse(inputs=self.outputs(kind, spec.model_dump(by_alias=True, mode="json")))

    async def diff(self, request: DiffRequest) -> DiffResponse:
        kind = self.kind_of(request.type)
        if kind.changes_nothing:
            return DiffResponse(changes=False)
        old, new = plain_map(request.old_state), plain_map(request.new_inputs)
        changed = [
            key for key in spec_fields(kind) if key not in request.ignore_changes and old.get(key) != new.get(key)
        ]
        if not contains_unknown(new):
            drift = kind.drifted(kind.status_of(old), kind.parse(new))  # from the state alone: no thread needed
            changed += [key for key in drift if key not in changed]
        replaces = [key for key in changed if key in kind.replace_on]
        detail = {
            key: PropertyDiff(
                PropertyDiffKind.UPDATE_REPLACE if key in replaces else PropertyDiffKind.UPDATE,
                input_diff=False,
            )
            for key in changed
        }
        return DiffResponse(
            changes=bool(changed),
            replaces=replaces,
            diffs=changed,
            detailed_diff=detail,
            delete_before_replace=kind.delete_before_replace,
        )

    async def create(self, request: CreateRequest) -> CreateResponse:
        kind = self.kind_of(request.type)
        inputs = plain_map(request.properties)
        if request.preview:
            known = {} if contains_unknown(inputs) else kind.preview_status(kind.parse(inputs)).wire()
            return CreateResponse(properties={**request.properties, **self.outputs(kind, known)})
        resource_id, result = await self.run(lambda: kind.create(kind.parse(inputs)), request.urn)
        return CreateResponse(
            resource_id=resource_id, properties=self.outputs(kind, {**inputs, **reported(result), DECLARED: inputs})
        )

    async def read(self, request: ReadRequest) -> ReadResponse:
        kind = self.kind_of(request.type)
        state = plain_map(request.properties)
        if not state:
            raise ProviderError(
                f"{request.type} cannot be imported by id: declare it in the program and run `pulumi up`, "
                "which adopts what already exists"
            )
        spec = self.declared_spec(kind, state)
        try:
            observed = await self.run(
                lambda: kind.observe(request.resource_id, spec, kind.status_of(state)), request.urn
            )
        except Unreachable as error:
            # A server that is down (the drift `refresh` reports on the server itself) hides its objects:
            # they are kept as recorded rather than reported gone.
            with engine_log.about(request.urn):
                engine_log.status(f"kept as recorded: {error}")
            return ReadResponse(resource_id=request.resource_id, properties=request.properties, inputs=request.inputs)
        if observed is None:
            return ReadResponse()
        unknown = set(observed.inputs) - set(spec_fields(kind))
        if unknown:
            raise ProviderError(
                f"{kind.token} observed properties its spec does not have: {', '.join(sorted(unknown))}"
            )
        return ReadResponse(
            resource_id=request.resource_id,
            properties=self.outputs(kind, {**state, **observed.inputs, **observed.status.wire()}),
            inputs=request.inputs,
        )

    async def update(self, request: UpdateRequest) -> UpdateResponse:
        kind = self.kind_of(request.type)
        olds, news = plain_map(request.olds), plain_map(request.news)
        if request.preview:
            return UpdateResponse(properties={**request.olds, **request.news})
        result = await self.run(lambda: kind.update(request.resource_id, olds, kind.parse(news)), request.urn)
        return UpdateResponse(properties=self.outputs(kind, {**olds, **news, **reported(result), DECLARED: news}))

    async def delete(self, request: DeleteRequest) -> None:
        kind = self.kind_of(request.type)
        state = plain_map(request.properties)
        spec = self.declared_spec(kind, state)
        await self.run(lambda: kind.delete(request.resource_id, spec, kind.status_of(state)), request.urn)


def main() -> None:
    arguments = argparse.ArgumentParser()
    arguments.add_argument("engine")
    engine_log.connect(arguments.parse_known_args()[0].engine)
    serve(sys.argv[1:], VERSION, ThorbisProvider(served_kinds()))


if __name__ == "__main__":
    main()
