"""The schema as data (sql/schema/*.yaml): complete, internally consistent, tenant-safe, partition-safe.

Generic code turns these files into DDL and policies, so everything it relies on is checked here, once.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.database.declared import read_yaml

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "sql" / "schema"

# The 42 tables of the review's P0 `ALTER TABLE ... ENABLE ROW LEVEL SECURITY` list, exactly.
REVIEW_TABLES = frozenset(
    {
        "activities", "attachments", "chats", "communications", "companies", "company_settings",
        "contracts", "custom_roles", "customer_tags", "customers", "departments", "documents",
        "email_logs", "equipment", "equipment_tags", "estimates", "inventory", "invoices", "job_tags",
        "jobs", "labor_rates", "messages_v2", "payments", "po_settings", "posts", "price_book_categories",
        "price_book_items", "price_history", "pricing_rules", "properties", "purchase_orders", "schedules",
        "service_packages", "service_plans", "streams", "suggestions", "supplier_integrations", "tags",
        "team_members", "users", "verification_tokens", "votes_v2",
    }
)  # fmt: skip
# Created by the review (P1-2), plus customer_reviews, which the review uses without creating.
REVIEW_NEW_TABLES = frozenset(
    {
        "audit_logs", "notification_preferences", "notification_queue", "file_storage", "api_rate_limits",
        "background_jobs", "webhooks", "webhook_logs", "customer_reviews",
    }
)  # fmt: skip
PARTITIONED = frozenset({"communications", "schedules", "activities", "audit_logs"})

FILE_KEYS = frozenset({"tables"})
TABLE_KEYS = frozenset(
    {
        "name", "description", "origin", "tenancy", "parent", "soft_delete", "partition", "columns",
        "primary_key", "unique", "checks", "foreign_keys", "indexes",
    }
)  # fmt: skip
COLUMN_KEYS = frozenset({"name", "type", "null", "default", "references", "description"})
ON_DELETE = frozenset({"cascade", "restrict", "set null", "no action"})
TENANCIES = frozenset({"company", "self", "parent"})
ORIGINS = frozenset({"existing", "new"})
# Header amounts that are summed or compared in checks and reports: never NULL (defect 15).
MONEY_TOTALS = frozenset(
    {"subtotal", "tax_amount", "discount_amount", "shipping_amount", "total_amount", "paid_amount", "balance_amount"}
)
TIMESTAMP_WITHOUT_TZ = re.compile(r"^timestamp(\s*\(\d\))?(\s+without\s+time\s+zone)?$", re.IGNORECASE)
# Extension types live in the `extensions` schema (sql/access.yaml), so a bare name depends on search_path.
EXTENSION_TYPES = frozenset({"ltree", "citext", "hstore", "cube", "earthdistance"})
MAX_IDENTIFIER = 63


@dataclass(frozen=True)
class ForeignKey:
    """One foreign key, whether written on a column or in `foreign_keys`."""

    table: str
    name: str
    columns: tuple[str, ...]
    target: str
    target_columns: tuple[str, ...]
    on_delete: str


@dataclass
class Table:
    """A table as read from its file, with the raw mapping kept for key-level checks."""

    source: str
    raw: Mapping[str, Any]
    columns: dict[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.raw["name"])

    @property
    def primary_key(self) -> tuple[str, ...]:
        return tuple(self.raw["primary_key"])

    @property
    def uniques(self) -> list[Mapping[str, Any]]:
        return list(self.raw.get("unique", []))

    @property
    def checks(self) -> list[Mapping[str, Any]]:
        return list(self.raw.get("checks", []))

    def nullable(self, column: str) -> bool:
        return bool(self.columns[column].get("null", True))

    def foreign_keys(self) -> Iterator[ForeignKey]:
        for name, column in self.columns.items():
            ref = column.get("references")
            if ref is not None:
                yield ForeignKey(
                    self.name, f"{self.name}_{name}_fkey", (name,), ref["table"], (ref["column"],), ref["on_delete"]
                )
        for fk in self.raw.get("foreign_keys", []):
            ref = fk["references"]
            yield ForeignKey(
                self.name, fk["name"], tuple(fk["columns"]), ref["table"], tuple(ref["columns"]), fk["on_delete"]
            )

    def key_sets(self) -> list[frozenset[str]]:
        """Column sets a foreign key may point at: the primary key and every unique constraint."""
        return [frozenset(self.primary_key), *(frozenset(u["columns"]) for u in self.uniques)]


@cache
def _documents() -> tuple[tuple[str, Mapping[str, Any]], ...]:
    files = sorted(SCHEMA_DIR.glob("*.yaml"))
    assert files, f"no schema files in {SCHEMA_DIR}"
    return tuple((path.name, yaml.safe_load(path.read_text())) for path in files)


@cache
def _tables() -> dict[str, Table]:
    tables: dict[str, Table] = {}
    for source, document in _documents():
        for raw in document["tables"]:
            table = Table(source, raw, {column["name"]: column for column in raw["columns"]})
            assert table.name not in tables, f"{source}: {table.name} is also in {tables[table.name].source}"
            tables[table.name] = table
    return tables


def _all_fks() -> list[ForeignKey]:
    return [fk for table in _tables().values() for fk in table.foreign_keys()]


TABLE_NAMES = sorted(_tables())


def _table(name: str) -> Table:
    return _tables()[name]


# --- files and keys ---------------------------------------------------------------------------------------


def test_files_have_only_known_top_level_keys() -> None:
    for source, document in _documents():
        assert isinstance(document, dict), f"{source}: expected a mapping with `tables`"
        assert set(document) <= FILE_KEYS, f"{source}: unknown keys {set(document) - FILE_KEYS}"
        assert isinstance(document["tables"], list) and document["tables"], f"{source}: `tables` must be a list"


def test_table_names_are_unique_across_files() -> None:
    names = Counter(raw["name"] for _, document in _documents() for raw in document["tables"])
    assert [name for name, count in names.items() if count > 1] == []


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_table_and_column_keys_are_known(name: str) -> None:
    table = _table(name)
    assert set(table.raw) <= TABLE_KEYS, f"{name}: unknown keys {set(table.raw) - TABLE_KEYS}"
    assert table.raw.get("description"), f"{name}: a one-line description is required"
    names = Counter(column["name"] for column in table.raw["columns"])
    assert [column for column, count in names.items() if count > 1] == [], f"{name}: duplicate columns"
    for column in table.columns.values():
        # A bare `null:` key is YAML's null (None), not the string "null": it must be quoted.
        assert None not in column, f'{name}.{column.get("name")}: write the key as "null" (quoted)'
        assert set(column) <= COLUMN_KEYS, f"{name}.{column['name']}: unknown keys {set(column) - COLUMN_KEYS}"
        assert isinstance(column["type"], str), f"{name}.{column['name']}: type must be a string"
        assert isinstance(column.get("null", True), bool), f"{name}.{column['name']}: null must be true/false"
        if "default" in column:
            assert isinstance(column["default"], str), f"{name}.{column['name']}: default must be a SQL string"


# --- the table list ---------------------------------------------------------------------------------------


def test_existing_tables_are_exactly_the_reviews_42() -> None:
    existing = {name for name, table in _tables().items() if table.raw["origin"] == "existing"}
    assert len(REVIEW_TABLES) == 42
    assert existing == REVIEW_TABLES, (
        f"missing {sorted(REVIEW_TABLES - existing)}, extra {sorted(existing - REVIEW_TABLES)}"
    )


def test_new_tables_include_the_reviews() -> None:
    new = {name for name, table in _tables().items() if table.raw["origin"] == "new"}
    assert new >= REVIEW_NEW_TABLES, f"missing {sorted(REVIEW_NEW_TABLES - new)}"
    assert {table.raw["origin"] for table in _tables().values()} <= ORIGINS


# --- columns, keys, constraints ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_standard_columns(name: str) -> None:
    table = _table(name)
    for column in ("created_at", "updated_at"):
        assert column in table.columns, f"{name}: {column} is required"
        assert table.columns[column]["type"] == "timestamptz", f"{name}.{column} must be timestamptz"
        assert not table.nullable(column), f"{name}.{column} must be NOT NULL"
        assert table.columns[column].get("default") == "now()", f"{name}.{column} must default to now()"
    if "id" in table.columns:
        assert table.columns["id"]["type"] == "uuid" and not table.nullable("id"), f"{name}.id must be uuid NOT NULL"
        assert "id" in table.primary_key, f"{name}: id must be (part of) the primary key"
        if name != "users":  # users.id is the auth provider's id, given by the caller
            assert table.columns["id"].get("default") == "gen_random_uuid()", f"{name}.id default"


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_no_timestamp_without_time_zone(name: str) -> None:
    for column in _table(name).columns.values():
        assert not TIMESTAMP_WITHOUT_TZ.match(column["type"].strip()), f"{name}.{column['name']}: use timestamptz"


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_key_and_constraint_columns_exist(name: str) -> None:
    table = _table(name)
    assert table.primary_key, f"{name}: primary_key is required"
    for column in table.primary_key:
        assert column in table.columns, f"{name}: primary key column {column} missing"
        assert not table.nullable(column), f"{name}.{column}: primary key columns must be NOT NULL"
    for unique in table.uniques:
        missing = set(unique["columns"]) - set(table.columns)
        assert not missing, f"{name}: unique {unique['name']} names missing columns {missing}"
    for check in table.checks:
        assert isinstance(check["expression"], str) and check["expression"].strip(), f"{name}: {check['name']}"


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_constraint_names_start_with_the_table(name: str) -> None:
    table = _table(name)
    named = [*table.uniques, *table.checks, *table.raw.get("foreign_keys", [])]
    for constraint in named:
        assert constraint["name"].startswith(f"{name}_"), f"{name}: {constraint['name']} must be <table>_<what>"


def test_constraint_names_unique_and_short() -> None:
    names: list[str] = []
    for table in _tables().values():
        names.append(f"{table.name}_pkey")
        names += [u["name"] for u in table.uniques] + [c["name"] for c in table.checks]
        names += [fk.name for fk in table.foreign_keys()]
    duplicates = [name for name, count in Counter(names).items() if count > 1]
    assert duplicates == []
    too_long = [name for name in names if len(name) > MAX_IDENTIFIER]
    assert too_long == [], f"longer than {MAX_IDENTIFIER} characters: {too_long}"


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_money_totals_are_not_null_with_default(name: str) -> None:
    table = _table(name)
    for column in MONEY_TOTALS & set(table.columns):
        spec = table.columns[column]
        assert spec["type"] == "numeric(12,2)", f"{name}.{column} must be numeric(12,2)"
        assert not table.nullable(column) and "default" in spec, f"{name}.{column} must be NOT NULL DEFAULT"


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_soft_delete_has_deleted_at(name: str) -> None:
    table = _table(name)
    soft = bool(table.raw.get("soft_delete", False))
    assert soft == ("deleted_at" in table.columns), f"{name}: soft_delete and deleted_at must go together"
    if soft:
        assert table.columns["deleted_at"]["type"] == "timestamptz" and table.nullable("deleted_at")


def test_extension_types_are_schema_qualified() -> None:
    for name, table in _tables().items():
        for column in table.columns.values():
            assert column["type"] not in EXTENSION_TYPES, f"{name}.{column['name']}: write extensions.{column['type']}"


# --- foreign keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fk", _all_fks(), ids=lambda fk: fk.name)
def test_foreign_key_targets_a_key(fk: ForeignKey) -> None:
    tables = _tables()
    source = tables[fk.table]
    assert fk.target in tables, f"{fk.name}: unknown table {fk.target}"
    target = tables[fk.target]
    assert len(fk.columns) == len(fk.target_columns), f"{fk.name}: column counts differ"
    for column, target_column in zip(fk.columns, fk.target_columns, strict=True):
        assert column in source.columns, f"{fk.name}: {fk.table}.{column} missing"
        assert target_column in target.columns, f"{fk.name}: {fk.target}.{target_column} missing"
        assert source.columns[column]["type"] == target.columns[target_column]["type"], f"{fk.name}: type mismatch"
    assert frozenset(fk.target_columns) in target.key_sets(), f"{fk.name}: target is not a primary key or unique"
    assert fk.on_delete in ON_DELETE, f"{fk.name}: on_delete {fk.on_delete!r}"
    if fk.on_delete == "set null":
        assert all(source.nullable(column) for column in fk.columns), f"{fk.name}: SET NULL on a NOT NULL column"


def test_references_to_companies_cascade() -> None:
    wrong = [fk.name for fk in _all_fks() if fk.target == "companies" and fk.on_delete != "cascade"]
    assert wrong == []


def test_foreign_keys_have_no_cycles_besides_self_references() -> None:
    edges: dict[str, set[str]] = {name: set() for name in _tables()}
    for fk in _all_fks():
        if fk.target != fk.table:
            edges[fk.table].add(fk.target)
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"FK cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for target in sorted(edges[name]):
                visit(target, (*path, name))
            done.add(name)

    for name in sorted(edges):
        visit(name, ())


# --- tenancy ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_tenancy(name: str) -> None:
    table = _table(name)
    tenancy = table.raw.get("tenancy")
    assert tenancy in TENANCIES, f"{name}: tenancy must be one of {sorted(TENANCIES)}"
    assert ("parent" in table.raw) == (tenancy == "parent"), f"{name}: `parent` goes with tenancy parent only"
    if tenancy == "self":
        assert name == "companies"
    elif tenancy == "company":
        column = table.columns.get("company_id")
        assert column is not None, f"{name}: tenancy company needs company_id"
        assert column["type"] == "uuid" and not table.nullable("company_id"), f"{name}.company_id uuid NOT NULL"
        assert column.get("references") == {"table": "companies", "column": "id", "on_delete": "cascade"}
    else:
        assert "company_id" not in table.columns, f"{name}: has company_id, so its tenancy is company"
        parent = table.raw["parent"]
        fks = {fk.columns: fk for fk in table.foreign_keys()}
        fk = fks.get((parent["column"],))
        assert fk is not None and fk.target == parent["table"], f"{name}: parent must name an FK column of its own"
        assert not table.nullable(parent["column"]), f"{name}.{parent['column']}: a row must always have its parent"
        assert _table(parent["table"]).raw["tenancy"] in {"company", "self"}, f"{name}: parent chain is one hop"


def test_companies_is_the_only_self_tenant() -> None:
    assert [name for name, table in _tables().items() if table.raw["tenancy"] == "self"] == ["companies"]


# --- partitioning -----------------------------------------------------------------------------------------


def test_partitioned_tables_are_the_reviews() -> None:
    assert {name for name, table in _tables().items() if "partition" in table.raw} == PARTITIONED


@pytest.mark.parametrize("name", sorted(PARTITIONED))
def test_partition_key_in_every_key(name: str) -> None:
    table = _table(name)
    partition = table.raw["partition"]
    column = partition["column"]
    assert partition["interval"] == "month"
    assert table.columns[column]["type"] == "timestamptz" and not table.nullable(column)
    assert column in table.primary_key, f"{name}: primary key must include {column}"
    for unique in table.uniques:
        assert column in unique["columns"], f"{name}: unique {unique['name']} must include {column}"


def test_nothing_references_a_partitioned_table() -> None:
    assert [fk.name for fk in _all_fks() if fk.target in PARTITIONED] == []


# --- specific rules from the review and its known defects -------------------------------------------------


def test_customer_reviews_rating() -> None:
    table = _table("customer_reviews")
    assert table.columns["rating"]["type"] == "smallint" and not table.nullable("rating")
    assert any("rating BETWEEN 1 AND 5" in check["expression"] for check in table.checks)


def test_invoice_total_check_is_not_null_blind() -> None:
    table = _table("invoices")
    assert any("total_amount = subtotal + tax_amount - discount_amount" in c["expression"] for c in table.checks)
    for column in ("subtotal", "tax_amount", "discount_amount", "total_amount"):
        assert not table.nullable(column)


# --- query indexes -----------------------------------------------------------------------------------------

INDEX_KEYS = frozenset({"name", "keys", "method", "unique", "include", "where", "serves"})
# The review's P2-2 list: composite, partial and trigram indexes, each tied to the query it serves.
REVIEW_QUERY_INDEXES = frozenset(
    {
        "customers_company_email_idx", "customers_company_phone_idx", "customers_name_trgm_idx",
        "jobs_company_open_scheduled_idx", "invoices_company_outstanding_due_idx",
        "schedules_technician_upcoming_idx", "communications_thread_idx", "equipment_customer_property_idx",
        "price_book_items_name_trgm_idx",
    }
)  # fmt: skip
# Functions whose result changes between calls: PostgreSQL refuses them in an index predicate (defect 9).
NOT_IMMUTABLE = re.compile(r"\b(now|current_date|current_timestamp|localtimestamp|clock_timestamp|random)\b", re.I)


def test_the_reviews_query_indexes_are_declared() -> None:
    declared = {index["name"] for table in _tables().values() for index in table.raw.get("indexes", [])}
    assert declared >= REVIEW_QUERY_INDEXES


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_query_indexes_name_their_query_and_keep_immutable_predicates(name: str) -> None:
    for index in _table(name).raw.get("indexes", []):
        assert set(index) <= INDEX_KEYS, f"{index['name']}: unknown keys {set(index) - INDEX_KEYS}"
        assert index["name"].startswith(f"{name}_") and len(index["name"]) <= MAX_IDENTIFIER
        assert re.search(rf"\bFROM {name}\b", index.get("serves", "")), f"{index['name']}: `serves` must query {name}"
        assert not NOT_IMMUTABLE.search(index.get("where") or ""), f"{index['name']}: predicate must be IMMUTABLE"


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.parent.rglob("*.yaml")), ids=lambda path: path.name)
def test_the_program_reads_each_data_file_as_yaml_safe_load_does(path: Path) -> None:
    """The program reads sql/ with libyaml's parser (declared.read_yaml); the values must be safe_load's."""
    assert read_yaml(path) == yaml.safe_load(path.read_text())
