"""The program side of our resources: typed Args turned into the inputs the thorbisdb provider takes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import pulumi
from pydantic.alias_generators import to_camel


def provider_inputs(args: Any, secrets: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of an Args dataclass under their wire names, with secret fields wrapped as secrets."""
    secret_names = set(secrets)
    inputs: dict[str, Any] = {}
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        key = to_camel(field.name)
        if value is not None and key in secret_names:
            value = pulumi.Output.secret(value)
        inputs[key] = value
    return inputs


def declared_outputs(*names: str) -> dict[str, None]:
    """Output-only properties, declared so that the engine fills them in on the resource object."""
    return dict.fromkeys(names)
