"""The schema content, read from `sql/schema/*.yaml` into a typed model, and what is derived from it:
foreign-key constraints from column references, an index for every foreign key, the tenancy policies.

No table is special-cased here: everything a table needs is in its data (see sql/README.md).
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from components.database.index import IndexSpec
from components.database.table import CheckSpec, ColumnSpec, ForeignKeySpec, PartitionSpec, TableSpec, UniqueSpec

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "sql" / "schema"
TABLE_SCHEMA = "public"
MAX_NAME = 63


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


class CheckData(Data):
    name: str
    expression: str


class IndexData(Data):
    name: str
    keys: list[str]
    method: Literal["btree", "gin", "gist", "hash", "brin"] = "btree"
    unique: bool = False
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
    unique: list[NamedColumns] = Field(default_factory=list)
    checks: list[CheckData] = Field(default_factory=list)
    foreign_keys: list[ForeignKeyData] = Field(default_factory=list)
    indexes: list[IndexData] = Field(default_factory=list)

    def column(self, name: str) -> ColumnData:
        return next(column for column in self.columns if column.name == name)

    @property
    def has_updated_at(self) -> bool:
        return any(column.name == "updated_at" for column in self.columns)

    @cached_property
    def foreign_key_constraints(self) -> list[ForeignKeySpec]:
        inline = [
            ForeignKeySpec(
                name=bounded(f"{self.name}_{column.name}_fkey"),
                columns=[column.name],
                ref_schema=TABLE_SCHEMA,
                ref_table=column.references.table,
                ref_columns=[column.references.column],
                on_delete=column.references.on_delete,
            )
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
            columns=[
                ColumnSpec(name=c.name, type=c.type, nullable=c.nullable, default=c.default) for c in self.columns
            ],
            primary_key=self.primary_key,
            uniques=[UniqueSpec(name=u.name, columns=u.columns) for u in self.unique],
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
                where=index.where,
            )
            for index in self.indexes
        ]

    def foreign_key_indexes(self) -> list[IndexSpec]:
        """An index for every foreign key whose columns do not already lead the PK, a unique or an index."""
        leading = [self.primary_key, *(u.columns for u in self.unique)]
        # a partial index does not serve the FK's lookups (a parent's delete scans for all its children)
        leading += [index.keys for index in self.indexes if index.method == "btree" and index.where is None]
        derived: list[IndexSpec] = []
        for fk in self.foreign_key_constraints:
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


def bounded(name: str) -> str:
    """A PostgreSQL name of at most 63 bytes, kept unique by a short hash when it must be cut."""
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9]}_{digest}"


class SchemaModel(Data):
    tables: list[TableData]

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
        content = yaml.safe_load(path.read_text()) or {}
        try:
            tables += SchemaModel.model_validate(content).tables
        except ValueError as error:
            raise ValueError(f"{path.name}: {error}") from error
    return SchemaModel(tables=tables)
