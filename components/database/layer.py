"""The database layer: every object inside the stack's database, declared from `sql/` data.

The manifest of tables first (it refuses data loss before any change), then roles and schemas, then
extensions and functions, then the tables in foreign-key order, each followed by its updated_at trigger,
its four tenant policies and an index for each of its foreign keys.
It sees only the ConnectionSpec: which platform started the server is none of its business.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi
from pydantic.alias_generators import to_camel

from components.connection import ConnectionSpec
from components.database.access import load_access
from components.database.base import database_provider
from components.database.default_privileges import DefaultPrivileges, DefaultPrivilegesArgs
from components.database.extension import Extension, ExtensionArgs
from components.database.function import Function, FunctionArgs
from components.database.grant import Grant, GrantArgs
from components.database.index import Index, IndexArgs, IndexSpec
from components.database.manifest import Manifest, ManifestArgs
from components.database.model import TABLE_SCHEMA, TableData, bounded, load_schema
from components.database.policy import Policy, PolicyArgs
from components.database.role import Role, RoleArgs
from components.database.schema import Schema, SchemaArgs
from components.database.table import Table, TableArgs
from components.database.tenancy import TENANT_ROLES, tenant_policies
from components.database.trigger import Trigger, TriggerArgs
from config import StackSettings


class DatabaseLayer(pulumi.ComponentResource):
    """Roles, schemas, extensions, functions, tables with RLS, policies, triggers and indexes."""

    def __init__(
        self,
        name: str,
        connection: pulumi.Output[ConnectionSpec],
        settings: StackSettings,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("thorbis:database:Layer", name, None, opts)
        self.settings = settings
        self.access = load_access()
        self.schema = load_schema()
        self.provider = database_provider(
            f"{name}-provider",
            connection,
            settings.lock_timeout,
            settings.allow_data_loss,
            pulumi.ResourceOptions(parent=self),
        )
        self.manifest: pulumi.Resource | None = None
        self.manifest = Manifest(
            f"{name}-manifest",
            ManifestArgs(tables={t.name: {c.name: c.type for c in t.columns} for t in self.schema.tables}),
            self.options(),
        )
        roles = self.declare_roles()
        schemas = self.declare_schemas(roles)
        extensions = self.declare_extensions(schemas)
        functions = self.declare_functions([*schemas, *extensions])
        tables = self.declare_tables([*functions, *extensions])
        self.declare_privileges([*roles, *schemas, *tables.values()])
        self.table_count = len(tables)
        self.register_outputs({})

    def options(self, depends_on: Sequence[pulumi.Resource] = (), **extra: object) -> pulumi.ResourceOptions:
        """Every object waits for the manifest: a refused data loss stops the update before any change."""
        after = [*depends_on, *([self.manifest] if self.manifest else [])]
        return pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=after, **extra)  # type: ignore[arg-type]

    def declare_roles(self) -> list[pulumi.Resource]:
        adopt = self.settings.platform == "external"  # Supabase's own roles exist: adopt, never recreate
        declared: dict[str, Role] = {}
        for role in self.access.roles:
            password = None
            if role.password:
                secret = getattr(self.settings, _attribute(role.password))
                password = pulumi.Output.secret(secret.get_secret_value()) if secret else None
            declared[role.name] = Role(
                f"role-{role.name}",
                RoleArgs(
                    name=role.name,
                    login=role.login,
                    password=password,
                    bypass_rls=role.bypass_rls,
                    inherit=role.inherit,
                    member_of=role.member_of,
                    adopt_existing=adopt,
                ),
                self.options([declared[m] for m in role.member_of if m in declared]),
            )
        return list(declared.values())

    def declare_schemas(self, roles: list[pulumi.Resource]) -> list[pulumi.Resource]:
        return [
            Schema(f"schema-{schema.name}", SchemaArgs(name=schema.name, owner=schema.owner), self.options(roles))
            for schema in self.access.schemas
        ]

    def declare_extensions(self, schemas: list[pulumi.Resource]) -> list[pulumi.Resource]:
        return [
            Extension(
                f"extension-{extension.name}",
                ExtensionArgs(name=extension.name, schema_name=extension.schema_name),
                self.options(schemas),
            )
            for extension in self.access.extensions
        ]

    def declare_functions(self, after: list[pulumi.Resource]) -> list[pulumi.Resource]:
        return [
            Function(
                f"function-{function.schema_name}-{function.name}",
                FunctionArgs(
                    schema_name=function.schema_name,
                    name=function.name,
                    arguments=function.arguments,
                    returns=function.returns,
                    language=function.language,
                    body=function.body,
                    volatility=function.volatility,
                    security_definer=function.security_definer,
                    search_path=function.search_path,
                    owner=self.access.owner,
                    grant_execute_to=function.execute,
                ),
                self.options(after),
            )
            for function in self.access.functions
        ]

    def declare_tables(self, after: list[pulumi.Resource]) -> dict[str, Table]:
        tables: dict[str, Table] = {}
        for data in self.schema.in_dependency_order():
            referenced = [tables[fk.ref_table] for fk in data.foreign_key_constraints if fk.ref_table in tables]
            table = Table(
                f"table-{data.name}",
                TableArgs(**_table_inputs(data, self.access.owner)),
                self.options([*after, *referenced], protect=not self.settings.allow_data_loss),
            )
            tables[data.name] = table
            self.declare_table_objects(data, table)
        return tables

    def declare_table_objects(self, data: TableData, table: Table) -> None:
        if data.has_updated_at:
            Trigger(
                f"trigger-{data.name}-updated-at",
                TriggerArgs(
                    schema_name=TABLE_SCHEMA,
                    table=data.name,
                    name=f"{data.name}_set_updated_at",
                    timing="BEFORE",
                    events=["UPDATE"],
                    level="ROW",
                    function="app.set_updated_at",
                ),
                self.options([table]),
            )
        for policy in tenant_policies(data, self.schema):
            Policy(
                f"policy-{policy.name}",
                PolicyArgs(
                    schema_name=TABLE_SCHEMA,
                    table=policy.table,
                    name=bounded(policy.name),
                    command=policy.command,
                    roles=TENANT_ROLES,
                    using=policy.using,
                    with_check=policy.with_check,
                ),
                self.options([table]),
            )
        for index in [*data.declared_indexes(), *data.foreign_key_indexes()]:
            Index(f"index-{index.name}", IndexArgs(**_index_inputs(index)), self.options([table]))

    def declare_privileges(self, after: list[pulumi.Resource]) -> None:
        for schema_name, grantees in self.access.schema_usage.items():
            for grantee in grantees:
                Grant(
                    f"grant-usage-{schema_name}-{grantee}",
                    GrantArgs(grantee=grantee, privileges=["USAGE"], object_type="schema", schema_name=schema_name),
                    self.options(after),
                )
        for grantee, privileges in self.access.table_privileges.items():
            Grant(
                f"grant-tables-{grantee}",
                GrantArgs(
                    grantee=grantee,
                    privileges=privileges,
                    object_type="all_tables_in_schema",
                    schema_name=TABLE_SCHEMA,
                ),
                self.options(after),
            )
            DefaultPrivileges(
                f"default-privileges-tables-{grantee}",
                DefaultPrivilegesArgs(
                    owner=self.access.owner,
                    schema_name=TABLE_SCHEMA,
                    grantee=grantee,
                    object_type="tables",
                    privileges=privileges,
                ),
                self.options(after),
            )


def _attribute(config_key: str) -> str:
    """The settings attribute of a config key: authenticatorPassword -> authenticator_password."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in config_key)


def _table_inputs(data: TableData, owner: str) -> dict[str, Any]:
    dumped = data.table_spec(owner).model_dump(mode="json", by_alias=True)
    return {name: dumped[to_camel(name)] for name in TableArgs.__dataclass_fields__}


def _index_inputs(index: IndexSpec) -> dict[str, Any]:
    dumped = index.model_dump(mode="json", by_alias=True)
    return {name: dumped[to_camel(name)] for name in IndexArgs.__dataclass_fields__}
