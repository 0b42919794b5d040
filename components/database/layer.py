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
from components.database.cron_job import CronJob, CronJobArgs
from components.database.default_privileges import DefaultPrivileges, DefaultPrivilegesArgs
from components.database.extension import Extension, ExtensionArgs
from components.database.function import Function, FunctionArgs
from components.database.grant import Grant, GrantArgs, GrantSpec
from components.database.index import Index, IndexArgs
from components.database.manifest import Manifest, ManifestArgs
from components.database.materialized_view import MaterializedView, MaterializedViewArgs
from components.database.model import TABLE_SCHEMA, TableData, bounded, load_schema
from components.database.operations import load_jobs, load_maintenance, load_monitoring
from components.database.partitioning import PartitionGuard, PartitionGuardArgs, PartitionSet, PartitionSetArgs
from components.database.policy import Policy, PolicyArgs
from components.database.reporting import load_reporting
from components.database.role import Role, RoleArgs
from components.database.schema import Schema, SchemaArgs
from components.database.search import load_searches
from components.database.table import Table, TableArgs
from components.database.tenancy import TENANT_ROLES, tenant_policies
from components.database.trigger import Trigger, TriggerArgs
from components.database.view import View, ViewArgs
from components.kind import Spec
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
        self.reporting = load_reporting()
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
        self.roles = self.declare_roles()
        self.schemas = self.declare_schemas(list(self.roles.values()))
        self.extensions = self.declare_extensions(list(self.schemas.values()))
        functions = self.declare_functions([*self.schemas.values(), *self.extensions.values()])
        guard = PartitionGuard("partition-guard", PartitionGuardArgs(), self.options([self.schemas["app"]]))
        self.indexes: dict[str, list[pulumi.Resource]] = {}
        self.tables = self.declare_tables([*functions, *self.extensions.values(), guard])
        partition_sets = self.declare_partition_sets(guard)
        procedures = self.declare_procedures()
        self.declare_searches()
        tenant_views = self.declare_reporting()
        monitoring = self.declare_monitoring()
        self.declare_privileges([*self.roles.values(), *self.schemas.values(), *self.tables.values(), *tenant_views])
        self.declare_jobs(connection, [*partition_sets, *procedures, *tenant_views, *monitoring])
        self.table_count = len(self.tables)
        self.register_outputs({})

    def options(self, depends_on: Sequence[pulumi.Resource] = (), **extra: object) -> pulumi.ResourceOptions:
        """Every object waits for the manifest: a refused data loss stops the update before any change."""
        after = [*depends_on, *([self.manifest] if self.manifest else [])]
        return pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=after, **extra)  # type: ignore[arg-type]

    def declare_roles(self) -> dict[str, pulumi.Resource]:
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
        return dict(declared)

    def declare_schemas(self, roles: list[pulumi.Resource]) -> dict[str, pulumi.Resource]:
        return {
            schema.name: Schema(
                f"schema-{schema.name}", SchemaArgs(name=schema.name, owner=schema.owner), self.options(roles)
            )
            for schema in self.access.schemas
        }

    def declare_extensions(self, schemas: list[pulumi.Resource]) -> dict[str, pulumi.Resource]:
        return {
            extension.name: Extension(
                f"extension-{extension.name}",
                ExtensionArgs(name=extension.name, schema_name=extension.schema_name),
                self.options(schemas),
            )
            for extension in self.access.extensions
        }

    def declare_functions(self, after: list[pulumi.Resource]) -> list[pulumi.Resource]:
        return [
            Function(
                f"function-{function.schema_name}-{function.name}",
                FunctionArgs(**_args(FunctionArgs, function.function_spec(self.access.owner))),
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
                TableArgs(**_args(TableArgs, data.table_spec(self.access.owner))),
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
        self.indexes[data.name] = [
            Index(f"index-{index.name}", IndexArgs(**_args(IndexArgs, index)), self.options([table]))
            for index in [*data.declared_indexes(), *data.foreign_key_indexes()]
        ]

    def declare_partition_sets(self, guard: pulumi.Resource) -> list[pulumi.Resource]:
        """pg_partman takes over each partitioned table once its indexes are built (it copies them)."""
        partitioning = self.settings.partitioning
        retention = f"{partitioning.retention_months} months" if partitioning.retention_months else None
        return [
            PartitionSet(
                f"partition-set-{data.name}",
                PartitionSetArgs(
                    schema_name=TABLE_SCHEMA,
                    table=data.name,
                    control=data.partition.column,
                    premake=partitioning.premake,
                    retention=retention,
                ),
                self.options([self.tables[data.name], self.extensions["pg_partman"], guard, *self.indexes[data.name]]),
            )
            for data in self.schema.tables
            if data.partition
        ]

    def declare_procedures(self) -> list[pulumi.Resource]:
        """The retention procedures of sql/maintenance.yaml, after the tables they delete from."""
        return [
            Function(
                f"procedure-{spec.schema_name}-{spec.name}",
                FunctionArgs(**_args(FunctionArgs, spec)),
                self.options([self.schemas[spec.schema_name], *self.tables.values()]),
            )
            for spec in load_maintenance().procedure_specs(self.access.owner)
        ]

    def declare_searches(self) -> None:
        """The tenant-scoped searches of sql/search.yaml, after the tables they read: each matcher, then
        the function applications call, which calls it."""
        searches = load_searches(self.schema)
        after = [self.roles[searches.owner], *self.schemas.values(), *self.tables.values()]
        for spec in searches.function_specs(self.access.owner):
            after.append(
                Function(
                    f"function-{spec.schema_name}-{spec.name}",
                    FunctionArgs(**_args(FunctionArgs, spec)),
                    self.options(after),
                )
            )

    def declare_reporting(self) -> list[pulumi.Resource]:
        """Materialized views (no RLS: readable whole by `reporting` only) and the tenant views applications
        read them through; returns the tenant views, which the table grants of their schema cover."""
        reporting = self.reporting
        owner_grant, *reader_grants = reporting.grant_specs()
        schema = self.schemas[reporting.schema_name]
        owner_access = Grant(
            f"grant-{reporting.schema_name}-{owner_grant.grantee}",
            GrantArgs(**_args(GrantArgs, owner_grant)),
            self.options([schema, self.roles[reporting.owner]]),
        )
        views = [
            MaterializedView(
                f"materialized-view-{spec.name}",
                MaterializedViewArgs(**_args(MaterializedViewArgs, spec)),
                self.options([schema, owner_access, self.roles[reporting.owner], *self.tables.values()]),
            )
            for spec in reporting.materialized_view_specs()
        ]
        for grant in reader_grants:
            self.declare_grant(grant, [*views, self.roles.get(grant.grantee, schema)])
        return [
            View(f"view-{spec.schema_name}-{spec.name}", ViewArgs(**_args(ViewArgs, spec)), self.options(views))
            for spec in reporting.tenant_view_specs()
        ]

    def declare_monitoring(self) -> list[pulumi.Resource]:
        """Views over the server's statistics, read by `reporting`; they read pg_cron's and pg_partman's tables."""
        monitoring = load_monitoring()
        schema = self.schemas[monitoring.schema_name]
        views: list[pulumi.Resource] = [
            View(
                f"view-{spec.schema_name}-{spec.name}",
                ViewArgs(**_args(ViewArgs, spec)),
                self.options([schema, *self.extensions.values()]),
            )
            for spec in monitoring.view_specs(self.access.owner)
        ]
        for grant in monitoring.grant_specs():
            self.declare_grant(grant, [self.roles[grant.grantee], *views, *self.extensions.values()])
        return views

    def declare_grant(self, grant: GrantSpec, after: Sequence[pulumi.Resource]) -> None:
        Grant(
            f"grant-{grant.schema_name}-{grant.object_type}-{grant.grantee}",
            GrantArgs(**_args(GrantArgs, grant)),
            self.options(after),
        )

    def declare_jobs(self, connection: pulumi.Output[ConnectionSpec], after: Sequence[pulumi.Resource]) -> None:
        """pg_cron jobs of sql/jobs.yaml with the stack's schedules and parameters, after what they run."""
        database = connection.apply(lambda spec: spec.database)
        jobs = load_jobs(self.settings.jobs.schedules, self.settings.jobs.parameters)
        for job in jobs:
            CronJob(
                f"cron-job-{job.name}",
                CronJobArgs(name=job.name, schedule=job.schedule, command=job.command, database=database),
                self.options([self.extensions["pg_cron"], *after]),
            )

    def declare_privileges(self, after: list[pulumi.Resource]) -> None:
        for schema_name, grantees in self.access.schema_usage.items():
            for grantee in grantees:
                Grant(
                    f"grant-usage-{schema_name}-{grantee}",
                    GrantArgs(grantee=grantee, privileges=["USAGE"], object_type="schema", schema_name=schema_name),
                    self.options(after),
                )
        # adopted tables and the tenant views were not created by the owner: default privileges miss them
        covered = sorted([*self.tables, *(view.name for view in self.reporting.tenant_view_specs())])
        for grantee, privileges in self.access.table_privileges.items():
            Grant(
                f"grant-tables-{grantee}",
                GrantArgs(
                    grantee=grantee,
                    privileges=privileges,
                    object_type="all_tables_in_schema",
                    schema_name=TABLE_SCHEMA,
                    covers=covered,
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


def _args(args_type: Any, spec: Spec) -> dict[str, Any]:
    """A kind's spec as the keyword arguments of its resource's Args dataclass."""
    dumped = spec.model_dump(mode="json", by_alias=True)
    return {name: dumped[to_camel(name)] for name in args_type.__dataclass_fields__}
