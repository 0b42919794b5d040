"""The Table kind's data rules on a real server: rows that break a new rule are reported by rule and
count with nothing changed; once fixed, the rules are added (NOT VALID, then validated) and enforced; a
rule dropped or left unvalidated by hand is drift that `up` puts back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from components.database.kinds.table import TableKind
from components.database.table_shape import CheckSpec, ColumnSpec, ForeignKeySpec, TableSpec, UniqueSpec
from components.kind import ProviderError
from tests.integration.databases import Database, changes, recorded
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
        invoices.update(INVOICES.name, recorded(INVOICES, invoices.observe("", INVOICES)), wanted)
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
    invoices.update(INVOICES.name, recorded(INVOICES, invoices.observe("", INVOICES)), wanted)
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
    observed = invoices.observe("", wanted)
    assert observed is not None
    assert observed.inputs["checks"] == [  # one is gone; the other as the server has it, NOT VALID
        {
            "name": "rule_invoices_total_matches",
            "expression": "CHECK ((total_amount = (subtotal + tax_amount))) NOT VALID",
        }
    ]
    assert observed.status.not_validated == ["rule_invoices_total_matches"]  # the status says which
    assert changes(invoices, wanted, observed) == ["checks", "notValidated"]
    invoices.update(INVOICES.name, recorded(wanted, observed), wanted)
    assert checks_of(database) == dict.fromkeys((rule.name for rule in RULES), True)
    repaired = invoices.observe("", wanted)
    assert repaired is not None and changes(invoices, wanted, repaired) == []
    assert repaired.status.not_validated == []


# --- references that must stay within a company ------------------------------------------------------

A, B = "a0000000-0000-4000-8000-000000000001", "b0000000-0000-4000-8000-000000000002"


def tenant_tables() -> tuple[TableSpec, TableSpec]:
    """rule_customers and rule_jobs as the schema model derives them: the job's customer is of its company."""
    columns = [ColumnSpec(name="id", type="uuid", nullable=False), ColumnSpec(name="company_id", type="uuid")]
    customers = TableSpec(
        schema_name="app",
        name="rule_customers",
        columns=columns,
        primary_key=["id"],
        uniques=[UniqueSpec(name="rule_customers_tenant_key", columns=["company_id", "id"])],
    )
    jobs = TableSpec(
        schema_name="app",
        name="rule_jobs",
        columns=[*columns, ColumnSpec(name="customer_id", type="uuid")],
        primary_key=["id"],
        foreign_keys=[
            ForeignKeySpec(
                name="rule_jobs_customer_id_fkey",
                columns=["company_id", "customer_id"],
                ref_schema="app",
                ref_table="rule_customers",
                ref_columns=["company_id", "id"],
                on_delete="set null",
                set_null=["customer_id"],
            )
        ],
    )
    return customers, jobs


@pytest.fixture
def populated_with_a_cross_company_reference(database: Database) -> Iterator[TableKind]:
    """As an existing database has them: a single-column FK, and one of A's jobs on B's customer."""
    database.execute(
        "CREATE TABLE app.rule_customers (id uuid PRIMARY KEY, company_id uuid);"
        "CREATE TABLE app.rule_jobs (id uuid PRIMARY KEY, company_id uuid, customer_id uuid "
        "CONSTRAINT rule_jobs_customer_id_fkey REFERENCES app.rule_customers ON DELETE SET NULL)"
    )
    database.execute(
        "INSERT INTO app.rule_customers VALUES ('c0000000-0000-4000-8000-00000000000a', %s), "
        "('c0000000-0000-4000-8000-00000000000b', %s)",
        (A, B),
    )
    database.execute(
        "INSERT INTO app.rule_jobs VALUES ('e0000000-0000-4000-8000-000000000001', %s, "
        "'c0000000-0000-4000-8000-00000000000a'), ('e0000000-0000-4000-8000-000000000002', %s, "
        "'c0000000-0000-4000-8000-00000000000b')",
        (A, A),
    )
    try:
        yield database.kind(TableKind)
    finally:
        database.execute("DROP TABLE IF EXISTS app.rule_jobs, app.rule_customers")


def test_a_row_pointing_at_another_companys_row_is_reported_then_the_key_holds_within_the_company(
    database: Database, populated_with_a_cross_company_reference: TableKind
) -> None:
    kind = populated_with_a_cross_company_reference
    customers, jobs = tenant_tables()
    kind.update(customers.name, {}, customers)  # the unique (company_id, id), built concurrently
    assert database.rows(
        "SELECT c.contype, i.indisvalid FROM pg_constraint c JOIN pg_index i ON i.indexrelid = c.conindid "
        "WHERE c.conname = 'rule_customers_tenant_key'"
    ) == [("u", True)]
    with pytest.raises(ProviderError, match=r"rule_jobs_customer_id_fkey: 1 row\(s\).*nothing was changed"):
        kind.update(jobs.name, {}, jobs)
    assert database.scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'rule_jobs_customer_id_fkey'"
    ) == ("FOREIGN KEY (customer_id) REFERENCES app.rule_customers(id) ON DELETE SET NULL")

    database.execute("UPDATE app.rule_jobs SET customer_id = NULL WHERE id = 'e0000000-0000-4000-8000-000000000002'")
    kind.update(jobs.name, {}, jobs)
    observed = kind.observe("", jobs)
    assert observed is not None and observed.inputs["foreignKeys"] == jobs.model_dump(by_alias=True)["foreignKeys"]
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        database.execute(
            "UPDATE app.rule_jobs SET customer_id = 'c0000000-0000-4000-8000-00000000000b' "
            "WHERE id = 'e0000000-0000-4000-8000-000000000001'"
        )
    database.execute("DELETE FROM app.rule_customers WHERE id = 'c0000000-0000-4000-8000-00000000000a'")
    assert database.rows("SELECT company_id::text, customer_id FROM app.rule_jobs ORDER BY id") == [
        (A, None),  # the delete nulls the reference only: the job stays its company's
        (A, None),
    ]


# --- a unique key changed on a live table ---------------------------------------------------------------

USERS = TableSpec(
    schema_name="app",
    name="rule_users",
    columns=[
        ColumnSpec(name="id", type="integer", nullable=False),
        ColumnSpec(name="company_id", type="uuid", nullable=False),
        ColumnSpec(name="email", type="text", nullable=False),
    ],
    primary_key=["id"],
    uniques=[UniqueSpec(name="rule_users_email_key", columns=["email"])],
)
#: The same key within the company: an e-mail of company B no longer tells company A anything.
SCOPED_USERS = USERS.model_copy(
    update={"uniques": [UniqueSpec(name="rule_users_email_key", columns=["company_id", "email"])]}
)


@pytest.fixture
def users(database: Database) -> Iterator[TableKind]:
    kind = database.kind(TableKind, lock_timeout="20s")
    kind.create(USERS)
    database.execute("INSERT INTO app.rule_users VALUES (1, %s, 'one@example.com'), (2, %s, 'two@example.com')", (A, B))
    try:
        yield kind
    finally:
        database.execute("DROP TABLE IF EXISTS app.rule_users")


def key_of_users(database: Database) -> list[tuple[Any, ...]]:
    """The key's definition and whether its index (of the key's name) is valid; any index left beside it."""
    return database.rows(
        "SELECT c.conname, pg_get_constraintdef(c.oid), i.indexrelid::regclass::text, i.indisvalid "
        "FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid "
        "WHERE i.indrelid = 'app.rule_users'::regclass AND NOT i.indisprimary ORDER BY 1"
    )


def waiting_on_a_lock(database: Database, needle: str) -> bool:
    return bool(
        database.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE %s "
            "AND pid <> pg_backend_pid()",
            (f"%{needle}%",),
        )
    )


def test_a_unique_key_changed_on_a_live_table_never_blocks_its_writers(database: Database, users: TableKind) -> None:
    """Its new index is built CONCURRENTLY beside the old key (which holds until then) and takes the key's
    place in one short transaction: while the build waits for a writer's open transaction, other writers
    still write; on the same table, ADD CONSTRAINT would queue them all behind it."""
    with database.connect() as open_writer, database.connect(options="-c lock_timeout=3s") as other_writer:
        open_writer.execute("BEGIN")
        open_writer.execute("INSERT INTO app.rule_users VALUES (3, %s, 'three@example.com')", (A,))
        with ThreadPoolExecutor(max_workers=1) as pool:
            change = pool.submit(users.update, USERS.name, recorded(USERS, users.observe("", USERS)), SCOPED_USERS)
            deadline = time.monotonic() + 60
            while not waiting_on_a_lock(database, "rule_users"):  # the change waits for the open transaction
                assert not change.done(), change.exception()
                assert time.monotonic() < deadline, "the change never waited for the open transaction"
                time.sleep(0.05)
            other_writer.execute("INSERT INTO app.rule_users VALUES (4, %s, 'four@example.com')", (B,))
            open_writer.execute("COMMIT")
            change.result(timeout=60)
    assert key_of_users(database) == [
        ("rule_users_email_key", "UNIQUE (company_id, email)", "app.rule_users_email_key", True)
    ]
    database.execute("INSERT INTO app.rule_users VALUES (5, %s, 'one@example.com')", (B,))  # A's address, for B
    with pytest.raises(psycopg.errors.UniqueViolation):
        database.execute("INSERT INTO app.rule_users VALUES (6, %s, 'one@example.com')", (A,))
    observed = users.observe("", SCOPED_USERS)
    assert observed is not None and changes(users, SCOPED_USERS, observed) == []


def test_rows_that_a_new_or_changed_unique_key_would_refuse_are_named_and_counted(
    database: Database, users: TableKind
) -> None:
    users.update(USERS.name, recorded(USERS, users.observe("", USERS)), SCOPED_USERS)
    database.execute("INSERT INTO app.rule_users VALUES (3, %s, 'one@example.com')", (B,))  # A's address, for B
    with pytest.raises(ProviderError, match=r"rule_users_email_key: 2 row\(s\).*nothing was changed"):
        users.update(USERS.name, recorded(SCOPED_USERS, users.observe("", SCOPED_USERS)), USERS)
    assert key_of_users(database) == [
        ("rule_users_email_key", "UNIQUE (company_id, email)", "app.rule_users_email_key", True)
    ]
