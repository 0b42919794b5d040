"""The database layer: every object inside the stack's database, declared from `sql/` data.

The manifest of tables first (it refuses data loss before any change), then roles and schemas, then
extensions and functions, then the tables in foreign-key order, each followed by its updated_at trigger,
its four tenant policies and an index for each of its foreign keys.
It sees only the ConnectionSpec: which platform started the server is none of its business.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pulumi

from components.connection import ConnectionSpec
from components.database.declared.access import load_access
from components.database.declared.model import TABLE_SCHEMA, TableData, load_schema
from components.database.declared.operations import load_maintenance, load_monitoring
from components.database.declared.reporting import load_reporting
from components.database.declared.search import load_searches
from components.database.declared.tenancy import read_all_policy, tenant_policies
from components.database.kinds.cron_job import CronJobKind
from components.database.kinds.default_privileges import DefaultPrivilegesKind, DefaultPrivilegesSpec
from components.database.kinds.destroy_guard import DestroyGuardKind, DestroyGuardSpec
from components.database.kinds.exact_privileges import ExactPrivilegesKind, ExactPrivilegesSpec, managed_objects
from components.database.kinds.extension import ExtensionKind, ExtensionSpec
from components.database.kinds.function import FunctionKind
from components.database.kinds.grant import GrantKind, GrantSpec
from components.database.kinds.index import IndexKind
from components.database.kinds.manifest import ManifestKind, ManifestSpec
from components.database.kinds.materialized_view import MaterializedViewKind
from components.database.kinds.partition_guard import PartitionGuardKind, PartitionGuardSpec
from components.database.kinds.partition_set import PartitionSetKind, PartitionSetSpec
from components.database.kinds.policy import PolicyKind
from components.database.kinds.role import RoleKind
from components.database.kinds.row_security import RowSecurityKind, RowSecuritySpec
from components.database.kinds.schema import SchemaKind, SchemaSpec
from components.database.kinds.statistics_access import StatisticsAccessKind
from components.database.kinds.table import TableKind
from components.database.kinds.trigger import TriggerKind
from components.database.kinds.view import ViewKind
from components.resource import declare, fields_of
from config import StackSettings
from config.settings import attribute_of


def database_provider(
    name: str,
    connection: pulumi.Output[ConnectionSpec],
    settings: StackSettings,
    opts: pulumi.ResourceOptions | None = None,
) -> pulumi.ProviderResource:
    """The thorbisdb provider instance that database objects are created through (connection is secret)."""
    inputs: dict[str, Any] = {
        "connection": pulumi.Output.secret(connection.apply(lambda spec: spec.model_dump(mode="json"))),
        "lockTimeout": settings.lock_timeout,
        "statementTimeout": settings.statement_timeout,
        "allowDataLoss": settings.allow_data_loss,
    }
    return pulumi.ProviderResource("thorbisdb", name, inputs, opts)


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
            settings,
            pulumi.ResourceOptions(parent=self),
        )
        self.manifest: pulumi.Resource | None = None
        self.manifest = declare(
            ManifestKind,
            f"{name}-manifest",
            ManifestSpec(
                schema_name=TABLE_SCHEMA,
                tables={t.name: {c.name: c.type for c in t.columns} for t in self.schema.tables},
                renamed={
                    t.name: {c.name: c.renamed_from for c in t.columns if c.renamed_from}
                    for t in self.schema.tables
                    if any(c.renamed_from for c in t.columns)
                },
            ),
            self.options(),
        )
        self.roles = self.declare_roles()
        self.schemas = self.declare_schemas(list(self.roles.values()))
        self.extensions = self.declare_extensions(list(self.schemas.values()))
        functions = self.declare_functions([*self.schemas.values(), *self.extensions.values()])
        self.indexes: dict[str, list[pulumi.Resource]] = {}
        self.row_security: dict[str, pulumi.Resource] = {}
        self.grants: list[GrantSpec] = []
        self.grant_resources: list[pulumi.Resource] = []
        # new tables and partitions start with no privilege: the admin's default privileges grant nothing
        creates_bare = self.declare_exact_privileges("exact-privileges-defaults", self.schemas.values(), defaults=True)
        may_own = [
            self.declare_grant(
                GrantSpec(grantee=grantee, privileges=["CREATE"], object_type="schema", schema_name=schema_name),
                [*self.roles.values(), *self.schemas.values()],
                f"grant-create-{schema_name}-{grantee}",
            )
            for schema_name, grantees in self.access.schema_create.items()
            for grantee in grantees
        ]
        self.tables = self.declare_tables([*functions, *self.extensions.values(), creates_bare, *may_own])
        partition_sets = self.declare_partition_sets()
        self.declare_partition_guard([*partition_sets, *functions])
        procedures = self.declare_procedures()
        self.declare_searches()
        tenant_views = self.declare_reporting()
        monitoring = self.declare_monitoring()
        self.declare_privileges([*self.roles.values(), *self.schemas.values(), *self.tables.values(), *tenant_views])
        self.declare_exact_privileges("exact-privileges", [*self.grant_resources, *tenant_views, *monitoring])
        self.declare_jobs(connection, [*partition_sets, *procedures, *tenant_views, *monitoring])
        self.table_count = len(self.tables)
        self.register_outputs({})

    def guard_destroy(self, *rest_of_the_stack: pulumi.Resource) -> pulumi.Resource:
        """Declared last, after this layer and the rest of the stack: a destroy asks it first (its docstring)."""
        spec = DestroyGuardSpec(
            stack=pulumi.get_stack(), tables=[f"{TABLE_SCHEMA}.{t.name}" for t in self.schema.tables]
        )
        after = pulumi.ResourceOptions(provider=self.provider, depends_on=[self, *rest_of_the_stack])
        return declare(DestroyGuardKind, "destroy-guard", spec, after)

    def options(self, depends_on: Sequence[pulumi.Resource] = (), **extra: object) -> pulumi.ResourceOptions:
        """Every object waits for the manifest: a refused data loss stops the update before any change."""
        after = [*depends_on, *([self.manifest] if self.manifest else [])]
        return pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=after, **extra)  # type: ignore[arg-type]

    def declare_roles(self) -> dict[str, pulumi.Resource]:
        """Roles that exist already (Supabase's) are adopted and left as they are; the others are made."""
        declared: dict[str, pulumi.Resource] = {}
        for role, spec in zip(self.access.roles, self.access.role_specs(), strict=True):
            password = None
            if role.password:
                secret = getattr(self.settings, attribute_of(role.password))
                password = pulumi.Output.secret(secret.get_secret_value()) if secret else None
            declared[role.name] = declare(
                RoleKind,
                f"role-{role.name}",
                {**fields_of(spec), "password": password},
                self.options([declared[m] for m in role.member_of if m in declared]),
            )
        return declared

    def declare_schemas(self, roles: list[pulumi.Resource]) -> dict[str, pulumi.Resource]:
        return {
            schema.name: declare(
                SchemaKind,
                f"schema-{schema.name}",
                SchemaSpec(name=schema.name, owner=schema.owner),
                self.options(roles),
            )
            for schema in self.access.schemas
        }

    def declare_extensions(self, schemas: list[pulumi.Resource]) -> dict[str, pulumi.Resource]:
        return {
            extension.name: declare(
                ExtensionKind,
                f"extension-{extension.name}",
                ExtensionSpec(name=extension.name, schema_name=extension.schema_name),
                self.options(schemas),
            )
            for extension in self.access.extensions
        }

    def declare_functions(self, after: list[pulumi.Resource]) -> list[pulumi.Resource]:
        return [
            declare(
                FunctionKind,
                f"function-{function.schema_name}-{function.name}",
                function.function_spec(self.access.owner, self.settings.company_claim),
                self.options(after),
            )
            for function in self.access.functions
        ]

    def declare_tables(self, after: list[pulumi.Resource]) -> dict[str, pulumi.Resource]:
        tables: dict[str, pulumi.Resource] = {}
        for data in self.schema.in_dependency_order():
            referenced = [tables[fk.ref_table] for fk in data.foreign_key_constraints if fk.ref_table in tables]
            table = declare(
                TableKind,
                f"table-{data.name}",
                data.table_spec(self.access.owner),
                self.options([*after, *referenced]),
            )
            tables[data.name] = table
            self.row_security[data.name] = self.declare_table_objects(data, table)
        return tables

    def declare_table_objects(self, data: TableData, table: pulumi.Resource) -> pulumi.Resource:
        """Its trigger, policies and indexes; then its row level security, which drops any policy not declared
        and turns RLS on only once the declared ones exist. Returns the latter."""
        trigger = data.updated_at_trigger()
        if trigger is not None:
            declare(TriggerKind, f"trigger-{data.name}-updated-at", trigger, self.options([table]))
        specs = [*tenant_policies(data, self.schema), read_all_policy(data, self.access.read_all)]
        policies = [declare(PolicyKind, f"policy-{policy.name}", policy, self.options([table])) for policy in specs]
        row_security = declare(
            RowSecurityKind,
            f"row-security-{data.name}",
            RowSecuritySpec(schema_name=TABLE_SCHEMA, table=data.name, policies=[policy.name for policy in specs]),
            self.options([table, *policies]),
        )
        self.indexes[data.name] = [
            declare(IndexKind, f"index-{index.name}", index, self.options([table]))
            for index in [*data.declared_indexes(), *data.foreign_key_indexes()]
        ]
        return row_security

    def declare_partition_sets(self) -> list[pulumi.Resource]:
        """pg_partman takes over each partitioned table once its indexes are built (it copies them)."""
        partitioning = self.settings.partitioning
        retention = f"{partitioning.retention_months} months" if partitioning.retention_months else None
        return [
            declare(
                PartitionSetKind,
                f"partition-set-{data.name}",
                PartitionSetSpec(
                    schema_name=TABLE_SCHEMA,
                    table=data.name,
                    control=data.partition.column,
                    premake=partitioning.premake,
                    retention=retention,
                ),
                self.options([self.tables[data.name], self.extensions["pg_partman"], *self.indexes[data.name]]),
            )
            for data in self.schema.tables
            if data.partition
        ]

    def declare_partition_guard(self, after_made: list[pulumi.Resource]) -> None:
        """Every partition of the partitioned tables secured (and checked at each `up`), after pg_partman made them
        and after the securing function exists (a stack with no tables has nothing else to order it by)."""
        tables = [f"{TABLE_SCHEMA}.{data.name}" for data in self.schema.tables if data.partition]
        after = [*after_made, *(self.tables[name.split(".")[1]] for name in tables)]
        declare(PartitionGuardKind, "partition-guard", PartitionGuardSpec(tables=tables), self.options(after))

    def declare_procedures(self) -> list[pulumi.Resource]:
        """The retention procedures of sql/maintenance.yaml, after the tables they delete from."""
        return [
            declare(
                FunctionKind,
                f"procedure-{spec.schema_name}-{spec.name}",
                spec,
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
            after.append(declare(FunctionKind, f"function-{spec.schema_name}-{spec.name}", spec, self.options(after)))

    def declare_reporting(self) -> list[pulumi.Resource]:
        """Materialized views (no RLS: readable whole by `reporting` only) and the tenant views applications
        read them through; returns the tenant views, which the table grants of their schema cover."""
        reporting = self.reporting
        owner_grant, *reader_grants = reporting.grant_specs()
        schema = self.schemas[reporting.schema_name]
        owner_access = self.declare_grant(
            owner_grant, [schema, self.roles[reporting.owner]], f"grant-{reporting.schema_name}-{owner_grant.grantee}"
        )
        views = [
            declare(
                MaterializedViewKind,
                f"materialized-view-{spec.name}",
                spec,
                # a REFRESH reads the tables as the owner: through their policies (read_all), once RLS is on
                self.options([schema, owner_access, self.roles[reporting.owner], *self.row_security.values()]),
            )
            for spec in reporting.materialized_view_specs()
        ]
        for grant in reader_grants:  # after the schema itself: a stack may declare no materialized view
            grantee = [self.roles[grant.grantee]] if grant.grantee in self.roles else []
            self.declare_grant(grant, [schema, *views, *grantee])
        return [
            declare(ViewKind, f"view-{spec.schema_name}-{spec.name}", spec, self.options(views))
            for spec in reporting.tenant_view_specs()
        ]

    def declare_monitoring(self) -> list[pulumi.Resource]:
        """Views over the server's statistics, read by `reporting`; they read pg_cron's and pg_partman's tables.
        The statistics themselves are withheld from everyone else."""
        monitoring = load_monitoring()
        schema = self.schemas[monitoring.schema_name]
        views: list[pulumi.Resource] = [
            declare(
                ViewKind,
                f"view-{spec.schema_name}-{spec.name}",
                spec,
                self.options([schema, *self.extensions.values()]),
            )
            for spec in monitoring.view_specs(self.access.owner)
        ]
        for grant in monitoring.grant_specs():
            self.declare_grant(grant, [self.roles[grant.grantee], *views, *self.extensions.values()])
        declare(
            StatisticsAccessKind,
            "statistics-access",
            monitoring.statistics_access_spec(),
            self.options([*self.roles.values(), *self.extensions.values()]),
        )
        return views

    def declare_grant(
        self, grant: GrantSpec, after: Sequence[pulumi.Resource], name: str | None = None
    ) -> pulumi.Resource:
        """A declared grant; ExactPrivileges takes away whatever no such grant gives."""
        self.grants.append(grant)
        resource_name = name or f"grant-{grant.schema_name}-{grant.object_type}-{grant.grantee}"
        resource = declare(GrantKind, resource_name, grant, self.options(after))
        self.grant_resources.append(resource)
        return resource

    def declare_exact_privileges(
        self, name: str, after: Iterable[pulumi.Resource], defaults: bool = False
    ) -> pulumi.Resource:
        """Nothing granted beyond the declaration: on every object (after its grants), or, with `defaults`, in
        the admin's default privileges in the stack's schemas (before any table is made)."""
        schemas = [TABLE_SCHEMA, *(schema.name for schema in self.access.schemas)]
        spec = ExactPrivilegesSpec(roles=[role.name for role in self.access.roles])
        if defaults:
            spec = spec.model_copy(update={"default_schemas": schemas})
        else:
            relations = [
                *((TABLE_SCHEMA, table) for table in self.tables),
                *((view.schema_name, view.name) for view in self.reporting.tenant_view_specs()),
                *((view.schema_name, view.name) for view in self.reporting.materialized_view_specs()),
                *((view.schema_name, view.name) for view in load_monitoring().view_specs(self.access.owner)),
            ]
            spec = spec.model_copy(
                update={"objects": managed_objects(self.grants, relations, schemas, self.access.owner)}
            )
        return declare(ExactPrivilegesKind, name, spec, self.options(list(after)))

    def declare_jobs(self, connection: pulumi.Output[ConnectionSpec], after: Sequence[pulumi.Resource]) -> None:
        """pg_cron jobs of sql/jobs.yaml with the stack's schedules and parameters, after what they run."""
        database = connection.apply(lambda spec: spec.database)
        for job in self.settings.jobs.resolved():
            declare(
                CronJobKind,
                f"cron-job-{job.name}",
                {"name": job.name, "schedule": job.schedule, "command": job.command, "database": database},
                self.options([self.extensions["pg_cron"], *after]),
            )

    def declare_privileges(self, after: list[pulumi.Resource]) -> None:
        for schema_name, grantees in self.access.schema_usage.items():
            for grantee in grantees:
                self.declare_grant(
                    GrantSpec(grantee=grantee, privileges=["USAGE"], object_type="schema", schema_name=schema_name),
                    after,
                    f"grant-usage-{schema_name}-{grantee}",
                )
        # adopted tables and the tenant views were not created by the owner: default privileges miss them
        covered = sorted([*self.tables, *(view.name for view in self.reporting.tenant_view_specs())])
        for grantee, privileges in self.access.table_privileges.items():
            self.declare_grant(
                GrantSpec(
                    grantee=grantee,
                    privileges=privileges,
                    object_type="all_tables_in_schema",
                    schema_name=TABLE_SCHEMA,
                    covers=covered,
                ),
                after,
                f"grant-tables-{grantee}",
            )
            declare(
                DefaultPrivilegesKind,
                f"default-privileges-tables-{grantee}",
                DefaultPrivilegesSpec(
                    owner=self.access.owner,
                    schema_name=TABLE_SCHEMA,
                    grantee=grantee,
                    object_type="tables",
                    privileges=privileges,
                ),
                self.options(after),
            )
