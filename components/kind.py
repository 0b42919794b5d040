"""The shape every kind of object of the `thorbisdb` provider has, on its provider side.

A kind keeps what is wanted (a pydantic spec of its inputs), what exists (`observe`, reading the live
server or catalog into the same shape) and the work that closes the gap (`create`, `update`, `delete`),
like Alembic's inspect / compare / render. The generic provider (components/provider.py) turns these
into Pulumi's check / diff / create / read / update / delete, so that `refresh` sees drift and `up`
repairs it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class Spec(BaseModel):
    """Inputs of a kind: camelCase on the wire, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


SpecT = TypeVar("SpecT", bound=Spec)


class ProviderError(Exception):
    """An operation failed for a reason the user can act on; the message says what to do."""


class Unreachable(ProviderError):
    """The object cannot be read right now (its server does not answer), which is not the same as gone."""


class Kind(ABC, Generic[SpecT]):
    """One kind of object: its token, its spec, and how to read and change the real thing."""

    token: ClassVar[str]
    spec_type: ClassVar[type[Spec]]
    #: Inputs whose change cannot be applied in place: the object is replaced.
    replace_on: ClassVar[frozenset[str]] = frozenset()
    #: Inputs and outputs that hold secrets: always returned as secrets, in `read` too.
    secret_properties: ClassVar[frozenset[str]] = frozenset()
    #: Replace by deleting first (the new object would take the same name, port or directory).
    delete_before_replace: ClassVar[bool] = True

    def __init__(self) -> None:
        #: The provider instance's own config (an explicit provider's inputs), set at Configure.
        self.provider_config: dict[str, Any] = {}

    @abstractmethod
    def create(self, spec: SpecT) -> tuple[str, dict[str, Any]]:
        """Make the object; return its id and its outputs beyond the inputs."""

    @abstractmethod
    def observe(self, resource_id: str, spec: SpecT) -> dict[str, Any] | None:
        """What really exists, in the inputs' shape (plus outputs); None when it is gone."""

    @abstractmethod
    def update(self, resource_id: str, old: dict[str, Any], spec: SpecT) -> dict[str, Any]:
        """Bring the object to `spec`; `old` is its last recorded (or refreshed) state."""

    @abstractmethod
    def delete(self, resource_id: str, spec: SpecT) -> None:
        """Remove the object, or raise ProviderError when that would lose data that is not allowed."""

    def drifted(self, old_state: dict[str, Any], spec: SpecT) -> list[str]:
        """Properties that changed behind the stack's back although the inputs did not (default: none)."""
        return []

    def data_loss(self, old_inputs: dict[str, Any], spec: SpecT) -> list[str]:
        """What going from `old_inputs` to `spec` would destroy; refused at check unless data loss is allowed."""
        return []

    def preview_outputs(self, spec: SpecT) -> dict[str, Any]:
        """Outputs known before the object exists; the rest show as unknown in a preview."""
        return {}

    def parse(self, inputs: dict[str, Any]) -> SpecT:
        return self.spec_type.model_validate(inputs)  # type: ignore[return-value]
