"""The shape every kind of object of the `thorbisdb` provider has, declared once.

A kind keeps what is wanted (its Spec: the inputs, each field with its type, default, description and
markers), what exists (`observe`: the live object in the inputs' shape, and a typed Status beside it,
as CloudNativePG keeps status apart from spec) and the work that closes the gap (`create`, `update`,
`delete`), like Alembic's inspect / compare / render. The generic provider (components/provider.py)
turns these into Pulumi's check / diff / create / read / update / delete, and the generic resource
(components/resource.py) registers a kind's object from its Spec: nothing about a kind is written twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

T = TypeVar("T")


@dataclass(frozen=True)
class Marker:
    """What a field's annotation says about it beyond its type."""

    name: str


REPLACE = Marker("replace")
SECRET = Marker("secret")
ACCESS = Marker("access")
#: An input whose change cannot be applied in place: the object is replaced.
Replace = Annotated[T, REPLACE]
#: An input or status field that holds a secret: always sent and returned as a secret, in `read` too.
Secret = Annotated[T, SECRET]
#: A status field that lists access beyond the declaration (a privilege, a policy): a risk, not only drift.
Access = Annotated[T, ACCESS]


@dataclass(frozen=True)
class Expect:
    """A status field's healthy value: any other known value (not None) is drift, which `up` repairs."""

    value: Any


class Spec(BaseModel):
    """Inputs of a kind: camelCase on the wire, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class Status(BaseModel):
    """What a kind reports beyond its inputs (outputs): only the fields a kind sets are recorded, so a
    status that leaves a field out keeps its last recorded value. Unknown fields (inputs) are ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    def wire(self) -> dict[str, Any]:
        """The fields this status sets, under their wire names."""
        return self.model_dump(by_alias=True, mode="json", exclude_unset=True)

    def drift(self) -> list[str]:
        """Wire names of the fields that hold a known value other than their Expect-ed one."""
        expected = expectations(type(self))
        values = self.model_dump(by_alias=True, mode="json")
        return [name for name, want in expected.items() if values[name] is not None and values[name] != want]


class NoStatus(Status):
    """A kind that reports nothing beyond its inputs."""


SpecT = TypeVar("SpecT", bound=Spec)
StatusT = TypeVar("StatusT", bound=Status)


def wire_names(model: type[BaseModel]) -> dict[str, str]:
    """Python field name -> wire name (camelCase) of a Spec's or a Status's fields."""
    return {name: field.alias or name for name, field in model.model_fields.items()}


@cache
def marked(model: type[BaseModel], marker: Marker) -> frozenset[str]:
    """Wire names of the fields whose annotation carries `marker`."""
    return frozenset(field.alias or name for name, field in model.model_fields.items() if marker in field.metadata)


@cache
def expectations(model: type[Status]) -> dict[str, Any]:
    """Wire name -> healthy value of the status fields marked Expect(...)."""
    return {
        field.alias or name: marker.value
        for name, field in model.model_fields.items()
        for marker in field.metadata
        if isinstance(marker, Expect)
    }


@dataclass(frozen=True)
class Observed(Generic[StatusT]):
    """What really exists: the inputs it still matches or really has (wire names; what is missing or does
    not match is left out or holds the live value), and its status (why it differs, health, facts)."""

    inputs: dict[str, Any]
    status: StatusT


def reported(result: Status | Observed[Any]) -> dict[str, Any]:
    """What a create or update records beyond the inputs (wire names): a status, or an object read back."""
    if isinstance(result, Observed):
        return {**result.inputs, **result.status.wire()}
    return result.wire()


class ProviderError(Exception):
    """An operation failed for a reason the user can act on; the message says what to do."""


class Unreachable(ProviderError):
    """The object cannot be read right now (its server does not answer), which is not the same as gone."""


class Kind(ABC, Generic[SpecT, StatusT]):
    """One kind of object: its token, its spec and status, and how to read and change the real thing."""

    token: ClassVar[str]
    spec_type: ClassVar[type[Spec]]
    status_type: ClassVar[type[Status]] = NoStatus
    #: Replace by deleting first (the new object would take the same name, port or directory).
    delete_before_replace: ClassVar[bool] = True
    #: What deleting (or replacing) an object loses that exists nowhere else; `{name}` is its resource name.
    deleting_loses: ClassVar[str | None] = None
    #: What replacing an object loses (`{changes}`: the Replace inputs that changed; `{name}` and any other
    #: input: its old value): such a change is refused at check unless data loss is allowed. None: nothing.
    replacing_loses: ClassVar[str | None] = None
    #: Its inputs are a record, with nothing to change: never a diff (the engine still keeps the new inputs).
    changes_nothing: ClassVar[bool] = False

    def __init__(self) -> None:
        #: The provider instance's own config (an explicit provider's inputs), set at Configure.
        self.provider_config: dict[str, Any] = {}

    @property
    def replace_on(self) -> frozenset[str]:
        """Inputs marked Replace."""
        return marked(self.spec_type, REPLACE)

    @property
    def secret_properties(self) -> frozenset[str]:
        """Inputs and status fields marked Secret."""
        return marked(self.spec_type, SECRET) | marked(self.status_type, SECRET)

    @abstractmethod
    def create(self, spec: SpecT) -> tuple[str, StatusT | Observed[StatusT]]:
        """Make the object; return its id and its status (or the object read back: Observed)."""

    @abstractmethod
    def observe(self, resource_id: str, spec: SpecT, recorded: StatusT | None = None) -> Observed[StatusT] | None:
        """What really exists (see Observed); None when it is gone. `recorded` is the status the stack last
        recorded for the object (None before its first create): an object the stack adopted (`adopted`)
        is read as the stack found it, not as it would have made it."""

    @abstractmethod
    def update(self, resource_id: str, old: dict[str, Any], spec: SpecT) -> StatusT | Observed[StatusT]:
        """Bring the object to `spec`; `old` is its last recorded (or refreshed) state. Return its status, or
        the object read back (Observed), which the state then records in place of the inputs."""

    @abstractmethod
    def delete(self, resource_id: str, spec: SpecT, recorded: StatusT | None = None) -> None:
        """Remove the object, or raise ProviderError when that would lose data that is not allowed. With the
        status the stack recorded, a kind removes only what the stack made: never an adopted object, and only
        the privileges it granted."""

    def drifted(self, status: StatusT, spec: SpecT) -> list[str]:
        """Properties that changed behind the stack's back although the inputs did not: by default the
        status fields that are not as Expect-ed. Judged from the recorded state alone (no server: it runs on
        the provider's event loop, once per resource in every preview)."""
        return status.drift()

    def data_loss(self, old_inputs: dict[str, Any], spec: SpecT) -> list[str]:
        """What going from `old_inputs` to `spec` would destroy; refused at check unless data loss is allowed.
        By default, what replacing the object loses (replacing_loses) when `spec` changes a Replace input."""
        changed = self.replaced_inputs(old_inputs, spec)
        if self.replacing_loses is None or not changed:
            return []
        return [self.replacing_loses.format_map({**old_inputs, "changes": ", ".join(changed)})]

    def unsupported(self, old_inputs: dict[str, Any], spec: SpecT) -> list[str]:
        """Changes from `old_inputs` to `spec` this kind cannot make at all: refused at check, whatever
        thorbis:allowDataLoss says."""
        return []

    def allows_data_loss(self, spec: SpecT) -> bool:
        """Whether the stack allows data loss: an explicit provider's config says so (the database layer's);
        the platform's kinds, served by the default provider (which has none), carry it in their spec."""
        return bool(self.provider_config.get("allowDataLoss", getattr(spec, "allow_data_loss", False)))

    def replaced_inputs(self, old_inputs: dict[str, Any], spec: SpecT) -> list[str]:
        """The Replace inputs `spec` changes, each as `name old -> new` (a secret's values left out): the
        object cannot take them in place, so it would be deleted and made again."""
        new = spec.model_dump(by_alias=True, mode="json")
        return [
            key if key in self.secret_properties else f"{key} {old_inputs[key]} -> {new.get(key)}"
            for key in sorted(self.replace_on)
            if key in old_inputs and old_inputs[key] != new.get(key)
        ]

    def preview_status(self, spec: SpecT) -> StatusT:
        """The status known before the object exists; the rest shows as unknown in a preview."""
        return self.status_type()  # type: ignore[return-value]

    def parse(self, inputs: dict[str, Any]) -> SpecT:
        return self.spec_type.model_validate(inputs)  # type: ignore[return-value]

    def status_of(self, state: dict[str, Any]) -> StatusT:
        """The status recorded in a state (fields it lacks, as in states older than the field, default)."""
        return self.status_type.model_validate(state)  # type: ignore[return-value]
