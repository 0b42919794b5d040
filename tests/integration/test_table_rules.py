"""The Table kind's data rules on a real server: rows that break a new rule are reported by rule and
count with nothing changed; once fixed, the rules are added (NOT VALID, then validated) and enforced; a
rule dropped or left unvalidated by hand is drift that `up` puts back."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from components.database.table import CheckSpec, ColumnSpec, TableKind, TableSpec
from components.kind import ProviderError
from tests.integration.databases import Database
from tests.integration.test_database_logic import database as database  # its server, as this module's fixture

INVOICES = TableSpec(
    schema_name="app",
    name="rule_invoices",
    columns=[
        ColumnSpec(name="id", type="integer", nullable=False),
        ColumnSpec(name="subtotal", type="numeric(12,2)", nullable=False, default="0"),
        ColumnSpec(name="tax_amount", type="numeric(12,2)", nullable=False, default="0"),
        ColumnSpec(name="total_amount", type="numeric(12,2)", nullable=False, default="0"),
        ColumnSpec(name="phone", type="text"),
    ],
    primary_key=["id"],
)
RULES = [
    CheckSpec(name="rule_invoices_total_matches", expression="total_amount = subtotal + tax_amount"),
    CheckSpec(name="rule_invoices_phone_format", expression="phone ~ '^[+]?[1-9][0-9]{1,14}$'"),
]


@pytest.fixture
def invoices(database: Database) -> Iterator[TableKind]:
    kind = database.kind(TableKind)
    kind.create(INVOICES)
    database.execute(
        "INSERT INTO app.rule_invoices (id, subtotal, tax_amount, total_amount, phone) VALUES "
        "(1, 10, 1, 11, '+15125550100'), (2, 10, 1, 12, NULL), (3, 5, 0, 6, 'call me'), (4, 1, 0, 1, '0800')"
    )
    try:
        yield kind
    finally:
        database.execute("DROP TABLE IF EXISTS app.rule_invoices")


def checks_of(database: Database) -> dict[str, bool]:
    """The table's CHECK constraints and whether each is validated."""
    with database.connect() as conn:
        rows = conn.execute(
            "SELECT conname, convalidated FROM pg_constraint WHERE conrelid = 'app.rule_invoices'::regclass "
            "AND contype = 'c'"
        ).fetchall()
    return dict(rows)


def test_rows_that_break_new_rules_are_named_and_counted_and_nothing_changes(
    database: Database, invoices: TableKind
) -> None:
    wanted = INVOICES.model_copy(
        update={"checks": RULES, "columns": [*INVOICES.columns, ColumnSpec(name="notes", type="text")]}
    )
    with pytest.raises(ProviderError) as refused:
        invoices.update(INVOICES.name, invoices.observe("", INVOICES) or {}, wanted)
    message = str(refused.value)
    assert "rule_invoices_total_matches: 2 row(s)" in message  # rows 2 and 3; NULL phone passes its rule
    assert "rule_invoices_phone_format: 2 row(s)" in message  # 'call me' and '0800'
    assert "nothing was changed" in message
    assert checks_of(database) == {}
    assert database.scalar("SELECT count(*) FROM pg_attribute WHERE attrelid = 'app.rule_invoices'::regclass "
                           "AND attname = 'notes'") == 0  # fmt: skip


def test_rules_are_added_and_validated_once_the_rows_are_fixed(database: Database, invoices: TableKind) -> None:
    database.execute("UPDATE app.rule_invoices SET total_amount = subtotal + tax_amount, phone = NULL WHERE id > 1")
    wanted = INVOICES.model_copy(update={"checks": RULES})
    invoices.update(INVOICES.name, invoices.observe("", INVOICES) or {}, wanted)
    assert checks_of(database) == dict.fromkeys((rule.name for rule in RULES), True)
    with database.connect() as conn, pytest.raises(psycopg.errors.CheckViolation, match="total_matches"):
        conn.execute("INSERT INTO app.rule_invoices (id, subtotal, tax_amount, total_amount) VALUES (9, 1, 1, 1)")


def test_a_rule_dropped_or_left_not_valid_by_hand_is_drift_that_update_repairs(
    database: Database, invoices: TableKind
) -> None:
    database.execute("UPDATE app.rule_invoices SET total_amount = subtotal + tax_amount, phone = NULL WHERE id > 1")
    wanted = INVOICES.model_copy(update={"checks": RULES})
    invoices.update(INVOICES.name, {}, wanted)
    database.execute("ALTER TABLE app.rule_invoices DROP CONSTRAINT rule_invoices_phone_format")
    database.execute("ALTER TABLE app.rule_invoices DROP CONSTRAINT rule_invoices_total_matches")
    database.execute(
        "ALTER TABLE app.rule_invoices ADD CONSTRAINT rule_invoices_total_matches "
        "CHECK (total_amount = subtotal + tax_amount) NOT VALID"
    )
    observed = invoices.observe("", wanted) or {}
    assert observed["checks"] != wanted.model_dump(by_alias=True)["checks"]
    invoices.update(INVOICES.name, observed, wanted)
    assert checks_of(database) == dict.fromkeys((rule.name for rule in RULES), True)
    assert (invoices.observe("", wanted) or {})["checks"] == wanted.model_dump(by_alias=True)["checks"]
