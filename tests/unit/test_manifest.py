"""The manifest's data-loss rules: what going from one declared schema to the next would destroy."""

from __future__ import annotations

from components.database.kinds.manifest import ManifestKind, ManifestSpec

BEFORE = {"customers": {"id": "uuid", "notes": "text", "credit_limit": "numeric(12,2)"}, "payments": {"id": "uuid"}}


def losses(after: dict[str, dict[str, str]], renamed: dict[str, dict[str, str]] | None = None) -> list[str]:
    return ManifestKind().data_loss({"tables": BEFORE}, ManifestSpec(tables=after, renamed=renamed or {}))


def test_the_same_tables_lose_nothing_whatever_the_spacing_or_case_of_types() -> None:
    same = {"customers": {"id": "UUID", "notes": "text", "credit_limit": "NUMERIC(12,2)"}}
    assert losses({**same, "payments": {"id": "uuid"}}) == []


def test_new_tables_and_columns_lose_nothing() -> None:
    grown = {name: {**columns, "added": "text"} for name, columns in BEFORE.items()}
    assert losses({**grown, "invoices": {"id": "uuid"}}) == []


def test_a_removed_table_is_named() -> None:
    assert losses({"customers": BEFORE["customers"]}) == ["table payments would be dropped with its rows"]


def test_a_removed_column_is_named_and_a_retyped_one_is_not() -> None:
    """A column that changes type keeps its data: it is converted online (components/database/evolution.py)."""
    customers = {"id": "uuid", "credit_limit": "integer"}
    assert losses({"customers": customers, "payments": {"id": "uuid"}}) == ["column customers.notes would be dropped"]


def test_a_renamed_column_is_no_loss_but_a_rename_of_a_column_that_was_not_there_is() -> None:
    customers = {"id": "uuid", "remarks": "text", "credit_limit": "numeric(12,2)"}
    tables = {"customers": customers, "payments": {"id": "uuid"}}
    assert losses(tables, {"customers": {"remarks": "notes"}}) == []
    assert losses(tables, {"customers": {"remarks": "memo"}}) == ["column customers.notes would be dropped"]
