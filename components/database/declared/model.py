"""The schema content, read from `sql/schema/*.yaml` into a typed model, and what is derived from it:
foreign-key constraints from column references, an index for every foreign key, the tenancy policies.

No table is special-cased here: everything a table needs is in its data (see sql/README.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from components.database.base import bounded
from components.database.declared import SQL_DIR, read_yaml
from components.database.kinds.index import IndexSpec
from components.database.kinds.trigger import TriggerSpec
from components.database.table_shape import CheckSpec, ColumnSpec, ForeignKeySpec, PartitionSpec, TableSpec, UniqueSpec

SCHEMA_DIR = SQL_DIR / "schema"
TABLE_SCHEMA = "public"
TENANT_COLUMN = "company_id"
ROW_ID = "id"


class Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Reference(Data):
    table: str
    column: str = "id"
    on_delete: Literal["cascade", "restrict", "set null", "no action"] = "no action"


class ColumnData(Data):
    name: str
    type: str
    nullable: bool = Field(default=True, alias="null")
    default: str | None = None
    references: Reference | None = None
    description: str | None = None
    renamed_from: str | None = Field(default=None, description="The column's name before: `up` renames it.")
    backfill: str | None = Field(
        default=None,
        description="SQL expression (may use the row's other columns) that fills the existing rows when the "
        "column becomes NOT NULL without a default.",
    )


class ForeignKeyTarget(Data):
    table: str
    columns: list[str]


class ForeignKeyData(Data):
    name: str
    columns: list[str]
    references: ForeignKeyTarget
    on_delete: Literal["cascade", "restrict", "set null", "no action"] = "no action"


class NamedColumns(Data):
    name: str
    columns: list[str]


class UniqueData(NamedColumns):
    global_reason: str | None = Field(
        default=None,
        alias="global",
        description="Why this key may span companies although an insert that collides tells whether a value "
        "exists among another company's rows: only for values no company can guess or choose for another.",
    )


class CheckData(Data):
    name: str
    expression: str


class IndexData(Data):
    name: str
    keys: list[str]
    method: Literal["btree", "gin", "gist", "hash", "brin"] = "btree"
    unique: bool = False
    include: list[str] = Field(default_factory=list, description="Columns stored in the index (index-only scans).")
    where: str | None = None
    serves: str | None = Field(default=None, description="The query this index is for.")


class ParentLink(Data):
    column: str
    table: str


class PartitionData(Data):
    column: str
    interval: Literal["month"] = "month"


class TableData(Data):
    name: str
    description: str
    origin: Literal["existing", "new"]
    tenancy: Literal["company", "self", "parent"]
    parent: ParentLink | None = None
    soft_delete: bool = False
    partition: PartitionData | None = None
    columns: list[ColumnData]
    primary_key: list[str]
    unique: list[UniqueData] = Field(default_factory=list)
    checks: list[CheckData] = Field(default_factory=list)
    foreign_keys: list[ForeignKeyData] = Field(default_factory=list)
    indexes: list[IndexData] = Field(default_factory=list)
    # Set by SchemaModel, which sees every table: the company tables, and whether one of them points here.
    _company_tables: frozenset[str] = PrivateAttr(default=frozenset())
    _referenced_in_company: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _keys_answer_within_the_company(self) -> TableData:
        """A unique key is checked against every row of the table, RLS or not: one that spans companies
        answers "that value exists" about another company's rows. Each must be scoped, or say why it is global."""
        keys = {
            f"{self.name}_pkey": self.primary_key,
            **{unique.name: unique.columns for unique in self.unique if not unique.global_reason},
            **{index.name: index.keys for index in self.indexes if index.unique},
        }
        spanning = [name for name, columns in keys.items() if self.spans_companies(columns)]
        if spanning:
            raise ValueError(
                f"{self.name}: unique key(s) {', '.join(spanning)} span companies (a collision tells one company "
                f"about another's rows): add {TENANT_COLUMN}, or say why the key is global (`global: <reason>`)"
            )
        needless = [
            unique.name for unique in self.unique if unique.global_reason and not self.spans_companies(unique.columns)
        ]
        if needless:
            raise ValueError(f"{self.name}: unique key(s) {', '.join(needless)} are scoped already: remove `global`")
        return self

    def spans_companies(self, columns: list[str]) -> bool:
        """Whether a unique key on `columns` is checked against other companies' rows in a way that answers
        something: not when it includes company_id; nor the parent column of a table without company_id (its
        write policy makes that column name a row of the caller's company before any key is checked); nor
        the row's own random id, which names one row (a collision tells only what the id's holder knew)."""
        scoped_by = {TENANT_COLUMN, ROW_ID, *([self.parent.column] if self.tenancy == "parent" and self.parent else [])}
        return not scoped_by & set(columns)

    @property
    def global_keys(self) -> dict[str, str]:
        """Unique keys the data declares global, with the reason."""
        return {unique.name: unique.global_reason for unique in self.unique if unique.global_reason}

    def column(self, name: str) -> ColumnData:
        return next(column for column in self.columns if column.name == name)

    def updated_at_trigger(self) -> TriggerSpec | None:
        """BEFORE UPDATE, each row: app.set_updated_at keeps `updated_at` current (tables that have one)."""
        if not any(column.name == "updated_at" for column in self.columns):
            return None
        return TriggerSpec(
            schema_name=TABLE_SCHEMA,
            table=self.name,
            name=f"{self.name}_set_updated_at",
            timing="BEFORE",
            events=["UPDATE"],
            level="ROW",
            function="app.set_updated_at",
        )

    def names_company_row(self, reference: Reference) -> bool:
        return reference.table in self._company_tables and reference.column == "id"

    def within_company(self, reference: Reference) -> bool:
        """A company table's reference to another company table's row: the row must be of the same company."""
        return self.tenancy == "company" and self.names_company_row(reference)

    def references_within_company(self) -> list[tuple[str, str]]:
        """(column, table) of every reference that must name a row of the row's own company: between
        company tables (held by the composite FK), and from a parent-tenancy table to a company table
        other than its parent (it has no company_id for a key: held by its write policies)."""
        own_parent = self.parent.column if self.tenancy == "parent" and self.parent else None
        return [
            (column.name, column.references.table)
            for column in self.columns
            if column.references is not None
            and self.names_company_row(column.references)
            and (self.tenancy == "company" or (own_parent is not None and column.name != own_parent))
        ]

    def column_foreign_key(self, column: ColumnData, reference: Reference) -> ForeignKeySpec:
        """The FK a column's `references` makes. Between company tables it is (company_id, column) ->
        (company_id, id): a row can never point at another company's row (a single-column FK would let
        company A attach its job to B's customer, which B's delete would then cascade into)."""
        same_company = self.within_company(reference)
        return ForeignKeySpec(
            name=bounded(f"{self.name}_{column.name}_fkey"),
            columns=[TENANT_COLUMN, column.name] if same_company else [column.name],
            ref_schema=TABLE_SCHEMA,
            ref_table=reference.table,
            ref_columns=[TENANT_COLUMN, reference.column] if same_company else [reference.column],
            on_delete=reference.on_delete,
            set_null=[column.name] if same_company and reference.on_delete == "set null" else [],
        )

    @property
    def tenant_key(self) -> UniqueSpec | None:
        """(company_id, id), unique, for the same-company foreign keys that point at this table."""
        if not self._referenced_in_company:
            return None
        return UniqueSpec(name=bounded(f"{self.name}_tenant_key"), columns=[TENANT_COLUMN, "id"])

    @property
    def unique_constraints(self) -> list[UniqueSpec]:
        declared = [UniqueSpec(name=u.name, columns=u.columns) for u in self.unique]
        return declared + ([self.tenant_key] if self.tenant_key else [])

    @property
    def foreign_key_constraints(self) -> list[ForeignKeySpec]:
        inline = [
            self.column_foreign_key(column, column.references)
            for column in self.columns
            if column.references is not None
        ]
        composite = [
            ForeignKeySpec(
                name=fk.name,
                columns=fk.columns,
                ref_schema=TABLE_SCHEMA,
                ref_table=fk.references.table,
                ref_columns=fk.references.columns,
                on_delete=fk.on_delete,
            )
            for fk in self.foreign_keys
        ]
        return inline + composite

    def table_spec(self, owner: str) -> TableSpec:
        return TableSpec(
            schema_name=TABLE_SCHEMA,
            name=self.name,
            owner=owner,
            columns=[ColumnSpec(**c.model_dump(include=set(ColumnSpec.model_fields))) for c in self.columns],
            primary_key=self.primary_key,
            uniques=self.unique_constraints,
            checks=[CheckSpec(name=c.name, expression=c.expression) for c in self.checks],
            foreign_keys=self.foreign_key_constraints,
            partition=PartitionSpec(column=self.partition.column) if self.partition else None,
            comment=self.description,
        )

    def declared_indexes(self) -> list[IndexSpec]:
        return [
            IndexSpec(
                schema_name=TABLE_SCHEMA,
                table=self.name,
                name=index.name,
                keys=index.keys,
                method=index.method,
                unique=index.unique,
                include=index.include,
                where=index.where,
            )
            for index in self.indexes
        ]

    def foreign_key_indexes(self) -> list[IndexSpec]:
        """An index for every foreign key whose columns do not already lead the PK, a unique or an index."""
        leading = [self.primary_key, *(u.columns for u in self.unique_constraints)]
        # a partial index does not serve the FK's lookups (a parent's delete scans for all its children)
        leading += [index.keys for index in self.indexes if index.method == "btree" and index.where is None]
        derived: list[IndexSpec] = []
        # the longest first: (company_id, customer_id) serves company_id's FK, which then needs no index
        for fk in sorted(self.foreign_key_constraints, key=lambda fk: -len(fk.columns)):
            if any(keys[: len(fk.columns)] == fk.columns for keys in leading):
                continue
            leading.append(fk.columns)
            derived.append(
                IndexSpec(
                    schema_name=TABLE_SCHEMA,
                    table=self.name,
                    name=bounded(f"{self.name}_{'_'.join(fk.columns)}_idx"),
                    keys=fk.columns,
                )
            )
        return derived


class SchemaModel(Data):
    tables: list[TableData]

    def model_post_init(self, context: object, /) -> None:
        company_tables = frozenset(table.name for table in self.tables if table.tenancy == "company")
        for table in self.tables:
            table._company_tables = company_tables
        targets = {
            column.references.table
            for table in self.tables
            for column in table.columns
            if column.references is not None and table.within_company(column.references)
        }
        for table in self.tables:
            table._referenced_in_company = table.name in targets

    def table(self, name: str) -> TableData:
        return next(table for table in self.tables if table.name == name)

    def in_dependency_order(self) -> list[TableData]:
        """Tables ordered so that every table comes after those its foreign keys point to."""
        by_name = {table.name: table for table in self.tables}
        ordered: list[TableData] = []
        placed: set[str] = set()
        visiting: set[str] = set()

        def place(table: TableData) -> None:
            if table.name in placed:
                return
            if table.name in visiting:
                raise ValueError(f"foreign keys form a cycle through {table.name}")
            visiting.add(table.name)
            for fk in table.foreign_key_constraints:
                if fk.ref_table != table.name:
                    place(by_name[fk.ref_table])
            visiting.discard(table.name)
            placed.add(table.name)
            ordered.append(table)

        for table in self.tables:
            place(table)
        return ordered


def load_schema(directory: Path = SCHEMA_DIR) -> SchemaModel:
    tables: list[TableData] = []
    for path in sorted(directory.glob("*.yaml")):
        content = read_yaml(path) or {}
        try:
            tables += SchemaModel.model_validate(content).tables
        except ValueError as error:
            raise ValueError(f"{path.name}: {error}") from error
    return SchemaModel(tables=tables)
