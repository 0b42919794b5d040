"""The stack's one output: its ConnectionSpec, as a secret (it holds the admin and Redis passwords).

Tools that reach a stack from outside (ops/, recovery/, bench/, scripts/connect-info) read it back with
`connection_of`; everything else one might export (host, ports, a DSN) is derived from it there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import pulumi

from components.connection import ConnectionSpec

if TYPE_CHECKING:
    from pulumi.automation import OutputValue

CONNECTION = "connection"
"""The name of the output."""


def export_outputs(connection: pulumi.Output[ConnectionSpec]) -> None:
    pulumi.export(CONNECTION, pulumi.Output.secret(connection.apply(lambda spec: spec.model_dump(mode="json"))))


def connection_of(outputs: Mapping[str, OutputValue]) -> ConnectionSpec | None:
    """The ConnectionSpec among a stack's outputs as the Automation API returns them (secrets in clear), or
    None when the stack has not exported one (never brought up)."""
    exported = outputs.get(CONNECTION)
    return None if exported is None else ConnectionSpec.model_validate(exported.value)
