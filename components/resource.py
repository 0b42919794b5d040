"""The program side of every kind: one generic resource, registered from the kind's Spec.

`declare(RoleKind, "role-anon", spec_or_inputs, opts)` registers a `thorbisdb` resource under the
kind's token: its inputs are the Spec's fields under their wire names (an input may be a pulumi Output,
such as a password or a value computed from another resource), the fields the Spec marks Secret are
sent as secrets, and the kind's Status fields are registered as outputs. A field the Spec does not have
is an error here, when the program runs, naming the kind and the field.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pulumi
from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from components.kind import SECRET, Kind, Spec, marked, wire_names

KindType = type[Kind[Any, Any]]


def wire_inputs(kind: KindType, inputs: Spec | Mapping[str, Any]) -> dict[str, Any]:
    """A kind's inputs under their wire names, checked against its Spec, secrets wrapped as secrets."""
    if isinstance(inputs, Spec):
        if not isinstance(inputs, kind.spec_type):
            raise TypeError(f"{kind.token} takes a {kind.spec_type.__name__}, not a {type(inputs).__name__}")
        values = fields_of(inputs)
    else:
        values = dict(inputs)
        checked(kind, values)
    names = wire_names(kind.spec_type)
    secrets = marked(kind.spec_type, SECRET)
    wired: dict[str, Any] = {}
    for name, value in values.items():
        key = names[name]
        plain = value if isinstance(value, pulumi.Output) else to_jsonable_python(value, by_alias=True)
        wired[key] = pulumi.Output.secret(plain) if key in secrets and plain is not None else plain
    return wired


def fields_of(spec: Spec) -> dict[str, Any]:
    """A spec's fields by their Python names (not dict(spec): a field may be called `keys`)."""
    return {name: getattr(spec, name) for name in type(spec).model_fields}


def checked(kind: KindType, values: dict[str, Any]) -> None:
    """Unknown fields are refused; inputs that are all known are validated by the Spec at once."""
    names = wire_names(kind.spec_type)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise TypeError(
            f"{kind.token} has no input {', '.join(unknown)}; its inputs ({kind.spec_type.__name__}): "
            f"{', '.join(names)}"
        )
    if any(isinstance(value, pulumi.Output) for value in values.values()):
        return  # the provider's check validates them once they are known
    try:
        values.update(fields_of(kind.spec_type.model_validate(values)))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
            for problem in error.errors(include_url=False)
        )
        raise ValueError(f"{kind.token}: {problems}") from error


class KindResource(pulumi.CustomResource):
    """An object of a `thorbisdb` kind; its status fields are outputs under their wire names."""

    def __init__(
        self,
        kind: KindType,
        name: str,
        inputs: Spec | Mapping[str, Any],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        self.kind = kind
        outputs = dict.fromkeys(wire_names(kind.status_type).values())  # filled in by the engine
        super().__init__(kind.token, name, {**outputs, **wire_inputs(kind, inputs)}, opts)


#: The objects declared and not yet awaited by `registered`.
_declared: list[KindResource] = []


def declare(
    kind: KindType, name: str, inputs: Spec | Mapping[str, Any], opts: pulumi.ResourceOptions | None = None
) -> KindResource:
    """Register an object of `kind` named `name` from its Spec (or its fields, some of them Outputs)."""
    resource = KindResource(kind, name, inputs, opts)
    _declared.append(resource)
    return resource


async def registered() -> None:
    """Wait until the engine has answered the registration of every object declared (the program's last step,
    `pulumi.run(registered)` in __main__.py); a registration that failed is left for the SDK to report.

    Otherwise the SDK's own end-of-program wait watches every pending output (some 7,800 for the whole stack)
    with asyncio.wait(FIRST_COMPLETED), which adds and removes a callback on each of them at every completion:
    quadratic, half the program's CPU in a no-change preview, and each registration waiting on another was
    sent that much later. Awaiting the registrations here first leaves it nothing to wait for.
    """
    declared, _declared[:] = list(_declared), []
    await asyncio.gather(*(resource.urn.future() for resource in declared), return_exceptions=True)
