"""The order the database layer declares objects in, under Pulumi's mocks: what an object calls or reads
exists before it, whatever the declared data holds (a program without partitioned tables too)."""

from __future__ import annotations

import pulumi
import pytest

from components.database import layer
from components.database.declared.model import SchemaModel, load_schema
from components.database.kinds.function import TOKEN as FUNCTION
from components.database.kinds.partition_guard import TOKEN as PARTITION_GUARD
from components.database.kinds.partition_guard import PartitionGuardSpec
from components.database.layer import DatabaseLayer
from tests.unit.mocks import Created, Wiring, record
from tests.unit.test_platform_handover import connection, settings_of


def declared(schema: SchemaModel | None) -> tuple[list[Created], dict[str, Wiring]]:
    def program() -> pulumi.Output[None]:
        DatabaseLayer("thorbis", pulumi.Output.secret(connection("local")), settings_of("local"))
        return pulumi.Output.from_input(None)

    with pytest.MonkeyPatch.context() as patch:
        if schema is not None:
            patch.setattr(layer, "load_schema", lambda: schema)
        return record(program, "dev")


def depends_on(wiring: dict[str, Wiring], name: str, target: str) -> bool:
    """Whether `name` waits for `target`, directly or through what it waits for."""
    urns = {wired.urn: wired_name for wired_name, wired in wiring.items()}
    seen, pending = set(), [name]
    while pending:
        current = pending.pop()
        if current == target:
            return True
        if current not in seen:
            seen.add(current)
            pending += [urns[urn] for urn in wiring[current].dependencies if urn in urns]
    return False


def unpartitioned() -> SchemaModel:
    """The declared tables, none of them partitioned."""
    return SchemaModel(tables=[table.model_copy(update={"partition": None}) for table in load_schema().tables])


@pytest.mark.parametrize("plain", [False, True], ids=["declared tables", "no partitioned table"])
def test_the_partition_guard_waits_for_the_function_it_calls(plain: bool) -> None:
    created, wiring = declared(unpartitioned() if plain else None)
    function = PartitionGuardSpec().function_name
    [guard] = [c.name for c in created if c.type == PARTITION_GUARD]
    [securing] = [c.name for c in created if c.type == FUNCTION and c.inputs.get("name") == function]
    assert depends_on(wiring, guard, securing), f"{guard} may run before {securing} exists"
