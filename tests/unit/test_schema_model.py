"""What the database layer derives from schema data: FK constraints and indexes, order, tenancy policies."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.database.base import bounded
from components.database.declared.model import SchemaModel, load_schema
from components.database.declared.tenancy import tenant_policies, tenant_predicate, write_predicate

SMALL = """
tables:
  - name: companies
    description: tenants
    origin: existing
    tenancy: self
    columns:
      - {name: id, type: uuid, "null": false}
    primary_key: [id]
  - name: jobs
    description: work
    origin: existing
    tenancy: company
    columns:
      - {name: id, type: uuid, "null": false}
      - {name: company_id, type: uuid, "null": false, references: {table: companies, on_delete: cascade}}
      - {name: customer_id, type: uuid, references: {table: customers}}
      - {name: number, type: text}
    primary_key: [id]
    unique:
      - {name: jobs_company_number_key, columns: [company_id, number]}
  - name: customers
    description: people
    origin: existing
    tenancy: company
    columns:
      - {name: id, type: uuid, "null": false}
      - {name: company_id, type: uuid, "null": false, references: {table: companies, on_delete: cascade}}
    primary_key: [id]
    indexes:
      - {name: customers_company_idx, keys: [company_id, id]}
  - name: job_tags
    description: link
    origin: existing
    tenancy: parent
    parent: {column: job_id, table: jobs}
    columns:
      - {name: job_id, type: uuid, "null": false, references: {table: jobs, on_delete: cascade}}
      - {name: tag, type: text, "null": false}
    primary_key: [job_id, tag]
  - name: company_notes
    description: link to the tenant itself
    origin: new
    tenancy: parent
    parent: {column: owner_company, table: companies}
    columns:
      - {name: id, type: uuid, "null": false}
      - {name: owner_company, type: uuid, "null": false, references: {table: companies}}
    primary_key: [id]
"""


@pytest.fixture
def model(tmp_path: Path) -> SchemaModel:
    (tmp_path / "small.yaml").write_text(SMALL)
    return load_schema(tmp_path)


def test_every_foreign_key_gets_an_index_unless_one_already_leads_with_its_columns(model: SchemaModel) -> None:
    jobs = model.table("jobs")
    # the same-company FK (company_id, customer_id) is not covered; company_id's is, by two keys
    assert [index.keys for index in jobs.foreign_key_indexes()] == [["company_id", "customer_id"]]
    # customers.company_id leads a declared index
    assert model.table("customers").foreign_key_indexes() == []
    # job_tags.job_id leads the primary key
    assert model.table("job_tags").foreign_key_indexes() == []
    assert [i.name for i in model.table("company_notes").foreign_key_indexes()] == ["company_notes_owner_company_idx"]


def test_foreign_keys_come_from_column_references(model: SchemaModel) -> None:
    fks = {fk.name: fk for fk in model.table("jobs").foreign_key_constraints}
    assert set(fks) == {"jobs_company_id_fkey", "jobs_customer_id_fkey"}
    assert fks["jobs_company_id_fkey"].on_delete == "cascade"
    assert fks["jobs_customer_id_fkey"].ref_table == "customers"
    assert fks["jobs_company_id_fkey"].columns == ["company_id"]


def test_a_reference_between_company_tables_stays_within_the_company(model: SchemaModel) -> None:
    customer = next(fk for fk in model.table("jobs").foreign_key_constraints if fk.name == "jobs_customer_id_fkey")
    assert (customer.columns, customer.ref_columns) == (["company_id", "customer_id"], ["company_id", "id"])
    assert customer.set_null == []
    # the referenced table gets the unique (company_id, id) the FK needs; an unreferenced one does not
    assert [u.columns for u in model.table("customers").unique_constraints if u.name == "customers_tenant_key"] == [
        ["company_id", "id"]
    ]
    assert model.table("jobs").tenant_key is None
    # a link table (no company_id) and a reference to the tenant itself keep single-column keys
    assert [fk.columns for fk in model.table("job_tags").foreign_key_constraints] == [["job_id"]]
    assert [fk.columns for fk in model.table("company_notes").foreign_key_constraints] == [["owner_company"]]


def test_set_null_between_company_tables_nulls_the_reference_only() -> None:
    assigned = next(
        fk for fk in load_schema().table("jobs").foreign_key_constraints if fk.name == "jobs_assigned_to_fkey"
    )
    assert (assigned.columns, assigned.on_delete, assigned.set_null) == (
        ["company_id", "assigned_to"],
        "set null",
        ["assigned_to"],
    )


def test_tables_come_after_the_tables_they_reference(model: SchemaModel) -> None:
    order = [table.name for table in model.in_dependency_order()]
    assert order.index("companies") < order.index("customers") < order.index("jobs") < order.index("job_tags")


def test_long_names_are_cut_to_63_bytes_and_stay_distinct() -> None:
    first, second = bounded("x" * 70 + "_a"), bounded("x" * 70 + "_b")
    assert len(first) == len(second) == 63
    assert first != second
    assert bounded("short_name") == "short_name"


def test_tenant_predicates_use_the_helper_once_per_statement(model: SchemaModel) -> None:
    assert tenant_predicate(model.table("jobs"), model) == "company_id = (SELECT app.current_company_id())"
    assert tenant_predicate(model.table("companies"), model) == "id = (SELECT app.current_company_id())"
    through_parent = tenant_predicate(model.table("job_tags"), model)
    assert through_parent == (
        "job_id IN (SELECT p.id FROM public.jobs p WHERE p.company_id = (SELECT app.current_company_id()))"
    )
    assert tenant_predicate(model.table("company_notes"), model) == "owner_company = (SELECT app.current_company_id())"


def test_each_table_gets_four_policies_and_none_widens_access(model: SchemaModel) -> None:
    for table in model.tables:
        policies = tenant_policies(table, model)
        assert [p.command for p in policies] == ["SELECT", "INSERT", "UPDATE", "DELETE"]
        insert = policies[1]
        assert insert.using is None and insert.with_check
        update = policies[2]
        assert update.using and update.with_check
        for policy in policies:
            assert "is_public" not in f"{policy.using} {policy.with_check}".lower()
            assert " or " not in f"{policy.using} {policy.with_check}".lower()


def test_a_foreign_key_cycle_is_reported(tmp_path: Path) -> None:
    (tmp_path / "cycle.yaml").write_text(
        """
tables:
  - {name: a, description: a, origin: new, tenancy: self, primary_key: [id],
     columns: [{name: id, type: uuid}, {name: b_id, type: uuid, references: {table: b}}]}
  - {name: b, description: b, origin: new, tenancy: self, primary_key: [id],
     columns: [{name: id, type: uuid}, {name: a_id, type: uuid, references: {table: a}}]}
"""
    )
    with pytest.raises(ValueError, match="cycle"):
        load_schema(tmp_path).in_dependency_order()


def test_a_link_table_writes_only_references_to_its_own_companys_rows() -> None:
    schema = load_schema()
    job_tags = schema.table("job_tags")
    assert job_tags.references_within_company() == [("tag_id", "tags"), ("added_by", "users")]
    insert, update = tenant_policies(job_tags, schema)[1:3]
    own_tag = "tag_id IN (SELECT r.id FROM public.tags r WHERE r.company_id = (SELECT app.current_company_id()))"
    own_user = f"coalesce({own_tag.replace('tag_id', 'added_by').replace('tags', 'users')}, true)"  # nullable
    assert own_user in (insert.with_check or "")
    assert own_tag in (insert.with_check or "") and own_tag in (update.with_check or "")
    assert own_tag not in (update.using or "")  # reading is decided by the parent row alone
    assert write_predicate(schema.table("jobs")) == ""  # a company table's composite keys hold it


def with_unique(unique: str, table: str = "jobs") -> str:
    """SMALL with one more unique key (a YAML flow mapping) on `table`."""
    content = yaml.safe_load(SMALL)
    declared = next(entry for entry in content["tables"] if entry["name"] == table)
    declared.setdefault("unique", []).append(yaml.safe_load(unique))
    return yaml.safe_dump(content)


@pytest.mark.parametrize(
    ("unique", "table"),
    [
        ("{name: jobs_number_key, columns: [number]}", "jobs"),  # a number another company also uses
        ("{name: job_tags_tag_key, columns: [tag]}", "job_tags"),  # a link table's key without its parent
    ],
)
def test_a_unique_key_that_spans_companies_is_refused_unless_declared_global(
    tmp_path: Path, unique: str, table: str
) -> None:
    (tmp_path / "small.yaml").write_text(with_unique(unique, table))
    with pytest.raises(ValueError, match=f"{table}: unique key\\(s\\) {table}_\\w+_key span companies"):
        load_schema(tmp_path)
    declared = unique.replace("}", ", global: a reason}")
    (tmp_path / "small.yaml").write_text(with_unique(declared, table))
    assert load_schema(tmp_path).table(table).global_keys == {unique.split(",")[0].split(": ")[1]: "a reason"}


@pytest.mark.parametrize(
    ("unique", "table"),
    [
        ("{name: jobs_number_key, columns: [company_id, number]}", "jobs"),
        ("{name: jobs_id_number_key, columns: [id, number]}", "jobs"),  # the row's own random id
        ("{name: job_tags_job_tag_key, columns: [job_id, tag]}", "job_tags"),  # the parent column
    ],
)
def test_a_scoped_unique_key_needs_no_reason_and_may_not_claim_one(tmp_path: Path, unique: str, table: str) -> None:
    (tmp_path / "small.yaml").write_text(with_unique(unique, table))
    assert load_schema(tmp_path).table(table).global_keys == {}
    (tmp_path / "small.yaml").write_text(with_unique(unique.replace("}", ", global: needless}"), table))
    with pytest.raises(ValueError, match="are scoped already: remove `global`"):
        load_schema(tmp_path)


def test_every_global_key_of_the_schema_says_why() -> None:
    schema = load_schema()
    reasons = {name: reason for table in schema.tables for name, reason in table.global_keys.items()}
    assert set(reasons) == {
        "companies_slug_key",
        "verification_tokens_token_hash_key",
        "email_logs_provider_message_key",
    }
    assert all(len(reason.split()) > 10 for reason in reasons.values())
    assert next(u.columns for u in schema.table("users").unique) == ["company_id", "email"]
