"""Online conversion of a populated plain table into the monthly-partitioned table its spec declares.

Capture and replay, not one long lock: writers are blocked only for two short locks (switching to the
mirror, and the swap). The steps:

1. build: the partitioned copy (`<name>_partitioned`) from the spec, with a partition for every month
   that holds rows up to the premade window and for every month of that window, a default partition,
   the old table's RLS (enabled, forced or neither), the owner, partitions with RLS forced, and copies of
   the old table's indexes, policies, triggers and grants;
2. capture: a trigger on the old table logs every row change (jsonb) from now on;
3. copy: the rows, in ctid ranges, one transaction each (a row copied twice or missed is in the log);
4. replay: the log, in order, idempotently (per key: delete, then insert its last version), each batch
   removed from the log in the same REPEATABLE READ snapshot, so a late-committing entry is never skipped;
5. mirror: under a short lock the rest of the log is replayed and the capture trigger is replaced by one
   that applies each change to the copy in the writer's own transaction: from then on the two tables
   agree in every snapshot;
6. verify: counts and checksums of both tables in one snapshot, without locks; a mismatch stops here
   and removes the copy (the old table was never touched);
7. swap: under a short ACCESS EXCLUSIVE lock the old table and its indexes are renamed
   (`<name>_unpartitioned`), the copy and its indexes take their names, views are re-pointed, owned
   sequences follow, and the old table gets a BEFORE trigger that redirects every write to the new one:
   a writer whose prepared statement was waiting on the old table's lock writes into the old table after
   the swap (PostgreSQL keeps the plan's relation), and that row must not be lost.

The old table stays, frozen, until `drop_unpartitioned` (which checks the verification it carries).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from components.database.base import bounded, copied_grants, default_partition_name, partition_name, qualified
from components.database.kinds.index import definition_tail
from components.database.locks import Lock, TableLock
from components.database.session import Deferred, Statement, Timeouts, run_ddl, scalar
from components.database.table_shape import LiveTable, TableSpec, create_statement, read_table, rls_statements
from components.kind import ProviderError

VERIFIED_MARK = "thorbis-conversion verified"


@dataclass(frozen=True)
class Names:
    """Every name the conversion uses, derived from the table's."""

    schema: str
    table: str
    building: str
    kept: str
    log: str
    capture: str
    mirror: str

    @classmethod
    def of(cls, spec: TableSpec) -> Names:
        def derived(suffix: str) -> str:
            return bounded(f"{spec.name}_{suffix}")

        return cls(
            spec.schema_name,
            spec.name,
            derived("partitioned"),
            derived("unpartitioned"),
            derived("conversion_log"),
            derived("conversion_capture"),
            derived("conversion_mirror"),
        )

    def relation(self, name: str) -> sql.Identifier:
        return qualified(self.schema, name)

    def lock(self, name: str, lock: Lock) -> TableLock:
        return TableLock(self.schema, name, lock)


@dataclass
class Conversion:
    """What the conversion of one table works with, read once from the live table."""

    spec: TableSpec
    names: Names
    live: LiveTable
    columns: list[str]  # copied: the spec's columns the old table has
    keys: list[str]  # the spec's primary key (it includes the partition key)
    premake: int
    partitions: list[str] = field(default_factory=list)
    index_renames: list[tuple[str, str]] = field(default_factory=list)  # (temporary, final) on the copy
    old_indexes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ConversionResult:
    rows: int
    checksum: str
    partitions: list[str]
    rows_in_default: int
    kept_as: str
    views_repointed: list[str]


Phase = Callable[[str], None]


def convert_to_partitioned(
    conn: psycopg.Connection,
    spec: TableSpec,
    timeouts: Timeouts,
    *,
    premake: int = 4,
    batch_pages: int = 1000,
    on_phase: Phase | None = None,
) -> ConversionResult | None:
    """Convert the plain table `spec` names into its declared partitioned form; None when it already is."""
    conversion = prepare(conn, spec, premake)
    if conversion is None:
        return None
    phase = on_phase or (lambda _: None)
    names = conversion.names
    run_ddl(conn, leftover_statements(names), timeouts, what=f"conversion of {names.table}: clean-up")
    referenced = [TableLock(fk.ref_schema, fk.ref_table, Lock.SHARE_ROW_EXCLUSIVE) for fk in spec.foreign_keys]
    build = build_statements(conn, conversion)
    run_ddl(conn, build, timeouts, what=f"conversion of {names.table}: build", locks=referenced)
    capture = capture_statements(conn, names)
    held = [names.lock(names.table, Lock.SHARE_ROW_EXCLUSIVE)]
    run_ddl(conn, capture, timeouts, what=f"conversion of {names.table}: capture", locks=held)
    phase("capturing")
    copy_rows(conn, conversion, batch_pages, timeouts)
    phase("copied")
    while replay(conn, conversion, batch=5000) >= 1000:  # catch up while writers run freely
        pass
    mirror = [
        *replay_statements(conn, conversion, None),
        sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(names.capture), names.relation(names.table)),
        *mirror_statements(conn, conversion, target=names.building, source=names.table, timing="AFTER"),
    ]
    held = [names.lock(names.table, Lock.SHARE_ROW_EXCLUSIVE), names.lock(names.building, Lock.ROW_EXCLUSIVE)]
    run_ddl(conn, mirror, timeouts, what=f"conversion of {names.table}: mirror", locks=held)
    phase("mirrored")
    rows, checksum = verify(conn, conversion, timeouts)
    phase("verified")
    views = dependent_views(conn, names)
    swapped = [names.lock(names.table, Lock.ACCESS_EXCLUSIVE), names.lock(names.building, Lock.ACCESS_EXCLUSIVE)]
    swap = swap_statements(conn, conversion, rows, checksum, views)
    run_ddl(conn, swap, timeouts, what=f"swap {names.table}", locks=swapped)
    phase("swapped")
    default = qualified(names.schema, default_partition_name(names.table))
    return ConversionResult(
        rows=rows,
        checksum=checksum,
        partitions=conversion.partitions,
        rows_in_default=int(scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(default)) or 0),
        kept_as=names.kept,
        views_repointed=[f"{schema}.{name}" for schema, name, _, _ in views],
    )


def referenced_tables(conn: psycopg.Connection, table: TableLock, lock: Lock) -> list[TableLock]:
    """The other tables a table's foreign keys point at, each with `lock`: a statement that makes or drops
    those keys (ATTACH and DETACH PARTITION clone or keep them) locks them too, so its transaction takes
    them up front with the table's (components/database/locks.py)."""
    return [
        TableLock(str(schema), str(name), lock)
        for schema, name in conn.execute(
            "SELECT DISTINCT n.nspname, r.relname FROM pg_constraint c JOIN pg_class r ON r.oid = c.confrelid "
            "JOIN pg_namespace n ON n.oid = r.relnamespace WHERE c.conrelid = to_regclass(%s) AND c.contype = 'f' "
            "AND c.confrelid <> c.conrelid ORDER BY 1, 2",
            (table.relation.as_string(conn),),
        )
    ]


def drop_foreign_keys_first(
    conn: psycopg.Connection, table: TableLock, also: list[Statement], timeouts: Timeouts, what: str
) -> None:
    """Drop a work table (and `also`, in the same transaction).

    Dropping a foreign key takes ACCESS EXCLUSIVE on the table it points at (PostgreSQL drops its triggers
    there), and dropping the table drops them all in one transaction: the hot tables it references would be
    locked together, each while the others are waited for. So its foreign keys go first, one per
    transaction (each lock held for the catalog change only), and the table after them."""
    relation = table.relation
    for name, ref_schema, ref_table in conn.execute(
        "SELECT c.conname, n.nspname, r.relname FROM pg_constraint c JOIN pg_class r ON r.oid = c.confrelid "
        "JOIN pg_namespace n ON n.oid = r.relnamespace WHERE c.conrelid = to_regclass(%s) AND c.contype = 'f' "
        "ORDER BY 1",
        (relation.as_string(conn),),
    ).fetchall():
        locks = [table, TableLock(ref_schema, ref_table, Lock.ACCESS_EXCLUSIVE)]
        statement = sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(relation, sql.Identifier(name))
        run_ddl(conn, [statement], timeouts, what=f"{what}: its foreign key {name}", locks=locks)
    run_ddl(conn, [sql.SQL("DROP TABLE {}").format(relation), *also], timeouts, what=what, locks=[table])


def drop_unpartitioned(conn: psycopg.Connection, spec: TableSpec, timeouts: Timeouts) -> bool:
    """Drop the old table a conversion kept, once it carries a passed verification; False if none is left
    (its foreign keys first: drop_foreign_keys_first)."""
    names = Names.of(spec)
    kept = names.relation(names.kept)
    if read_table(conn, names.schema, names.kept) is None:
        return False
    comment = scalar(conn, "SELECT obj_description(to_regclass(%s), 'pg_class')", (kept.as_string(conn),))
    if not str(comment or "").startswith(VERIFIED_MARK):
        raise ProviderError(
            f"refusing to drop {names.schema}.{names.kept}: it carries no passed verification of the conversion "
            f"of {names.table}; compare it with {names.table} and drop it by hand if it is not needed"
        )
    drop_foreign_keys_first(
        conn,
        names.lock(names.kept, Lock.ACCESS_EXCLUSIVE),
        [sql.SQL("DROP FUNCTION IF EXISTS {}()").format(names.relation(names.mirror))],
        timeouts,
        f"drop {names.schema}.{names.kept}",
    )
    return True


# --- what the conversion starts from -----------------------------------------------------------------


def prepare(conn: psycopg.Connection, spec: TableSpec, premake: int) -> Conversion | None:
    """Read the old table and refuse, saying why, a conversion that could lose or hide anything."""
    where = f"converting {spec.schema_name}.{spec.name} to partitioned"
    live = read_table(conn, spec.schema_name, spec.name)
    if live is None or live.partitioned or spec.partition is None:
        return None
    if not scalar(conn, "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"):
        raise ProviderError(f"{where}: the migrating role must bypass row level security, or it would copy nothing")
    spec_columns = [column.name for column in spec.columns]
    lost = [name for name in live.columns if name not in spec_columns]
    if lost:
        raise ProviderError(f"{where}: column(s) {', '.join(lost)} are not in the spec and would be lost")
    missing_keys = [key for key in spec.primary_key if key not in live.columns]
    if missing_keys or spec.partition.column not in spec.primary_key:
        raise ProviderError(
            f"{where}: the primary key {spec.primary_key} must include {spec.partition.column} and only "
            "columns the table has"
        )
    relation = qualified(spec.schema_name, spec.name)
    nulls = scalar(
        conn,
        sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(relation, sql.Identifier(spec.partition.column)),
    )
    if nulls:
        raise ProviderError(f"{where}: {nulls} row(s) have no {spec.partition.column}; give them one first")
    blockers = [
        f"{kind} {name}"
        for kind, name in conn.execute(
            "SELECT 'foreign key', conname || ' on ' || conrelid::regclass::text FROM pg_constraint "
            "WHERE confrelid = to_regclass(%(t)s) AND contype = 'f' "
            "UNION ALL SELECT 'materialized view', d.refobjid::regclass::text FROM pg_depend d "
            "JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class AND v.relkind = 'm' "
            "WHERE d.refobjid = to_regclass(%(t)s) AND d.classid = 'pg_rewrite'::regclass",
            {"t": relation.as_string(conn)},
        )
    ]
    if blockers:
        raise ProviderError(
            f"{where}: {', '.join(blockers)} point(s) at it and would keep pointing at the old table; a "
            "partitioned table can only be referenced by keys that include the partition key. Drop them (their "
            "resources make them again), then run `pulumi up` again"
        )
    columns = [name for name in spec_columns if name in live.columns]
    return Conversion(spec, Names.of(spec), live, columns, list(spec.primary_key), premake)


# --- 1. build the partitioned copy -------------------------------------------------------------------


def leftover_statements(names: Names) -> list[Statement]:
    """What an interrupted earlier attempt left (the old table is untouched until the swap)."""
    old = names.relation(names.table)
    return [
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(names.capture), old),
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(names.mirror), old),
        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(names.relation(names.capture)),
        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(names.relation(names.mirror)),
        sql.SQL("DROP TABLE IF EXISTS {}").format(names.relation(names.log)),
        sql.SQL("DROP TABLE IF EXISTS {}").format(names.relation(names.building)),
    ]


MONTHS_QUERY = """
WITH window_ AS (SELECT date_trunc('month', now()) AS now_month)
SELECT m, m + interval '1 month', to_char(m, 'YYYY_MM') FROM (
  SELECT DISTINCT date_trunc('month', {column})::timestamptz AS m FROM {table}, window_
  WHERE {column} < now_month + ({premake} + 1) * interval '1 month'
  UNION
  SELECT generate_series(now_month - {premake} * interval '1 month', now_month + {premake} * interval '1 month',
                         interval '1 month') FROM window_
) months ORDER BY m
"""


def build_statements(conn: psycopg.Connection, conversion: Conversion) -> list[Statement]:
    spec, names = conversion.spec, conversion.names
    assert spec.partition is not None
    building = names.relation(names.building)
    temporary_uniques = [u.model_copy(update={"name": bounded(f"{u.name}_new")}) for u in spec.uniques]
    shape = spec.model_copy(update={"uniques": temporary_uniques})
    owner = owner_of(conversion)
    # RLS as the old table has it: an adopted table gets it from its RowSecurity, once its policies exist
    live = conversion.live
    rls = [on for on, held in zip(rls_statements(building), (live.rls_enabled, live.rls_forced), strict=True) if held]
    statements: list[Statement] = [create_statement(shape, building), *rls]
    statements.append(sql.SQL("ALTER TABLE {} OWNER TO {}").format(building, owner))
    months = conn.execute(
        sql.SQL(MONTHS_QUERY).format(
            column=sql.Identifier(spec.partition.column),
            table=names.relation(names.table),
            premake=sql.Literal(conversion.premake),
        )
    ).fetchall()
    for start, end, suffix in months:
        part = names.relation(partition_name(names.table, suffix))
        conversion.partitions.append(partition_name(names.table, suffix))
        statements.append(
            sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                part, building, sql.Literal(start), sql.Literal(end)
            )
        )
    default = names.relation(default_partition_name(names.table))
    statements.append(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(default, building))
    for name in [*conversion.partitions, default_partition_name(names.table)]:
        statements.append(partition_security(names.relation(name), owner))
    statements += copied_objects(conn, conversion)
    if spec.comment:
        statements.append(sql.SQL("COMMENT ON TABLE {} IS {}").format(building, sql.Literal(spec.comment)))
    return statements


def owner_of(conversion: Conversion) -> sql.Identifier:
    return sql.Identifier(conversion.spec.owner or conversion.live.owner)


def partition_security(partition: sql.Identifier, owner: sql.Identifier) -> Statement:
    return sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY, OWNER TO {}").format(
        partition, owner
    )


def copied_objects(conn: psycopg.Connection, conversion: Conversion) -> list[Statement]:
    """The old table's own indexes, policies, triggers and grants, made on the copy (read fully qualified)."""
    names = conversion.names
    old, building = names.relation(names.table), names.relation(names.building)
    statements: list[Statement] = []
    with conn.transaction():
        conn.execute("SET LOCAL search_path = ''")
        relation = old.as_string(conn)
        server_name = str(scalar(conn, "SELECT to_regclass(%s)::text", (relation,)))  # as the server quotes it
        for index, definition, unique, constraint in conn.execute(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisunique, "
            "EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid) "
            "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass(%s) "
            "ORDER BY 1",
            (relation,),
        ).fetchall():
            conversion.old_indexes.append(index)
            if constraint:  # primary key and uniques come from the spec
                continue
            if unique and not unique_includes_partition_key(conn, index, conversion):
                raise ProviderError(
                    f"converting {names.table}: unique index {index} does not include the partition key "
                    f"{conversion.spec.partition.column if conversion.spec.partition else ''}, which a partitioned "
                    "table requires; add it to the index in sql/schema first"
                )
            temporary = bounded(f"{index}_new")
            conversion.index_renames.append((temporary, index))
            tail = definition_tail(definition).removeprefix("UNIQUE ")
            statements.append(
                sql.SQL("CREATE {}INDEX {} ON {} {}").format(
                    sql.SQL("UNIQUE " if unique else ""), sql.Identifier(temporary), building, sql.SQL(tail)
                )
            )
        for name, permissive, command, roles, using, check in conn.execute(
            "SELECT policyname, permissive, cmd, roles, qual, with_check FROM pg_catalog.pg_policies "
            "WHERE schemaname = %s AND tablename = %s ORDER BY 1",
            (names.schema, names.table),
        ).fetchall():
            statement = sql.SQL("CREATE POLICY {} ON {} AS {} FOR {} TO {}").format(
                sql.Identifier(name),
                building,
                sql.SQL(permissive),
                sql.SQL(command),
                sql.SQL(", ").join(sql.SQL("PUBLIC") if r == "public" else sql.Identifier(r) for r in roles),
            )
            if using is not None:
                statement += sql.SQL(" USING ({})").format(sql.SQL(using))
            if check is not None:
                statement += sql.SQL(" WITH CHECK ({})").format(sql.SQL(check))
            statements.append(statement)
        for (definition,) in conn.execute(
            "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal",
            (relation,),
        ).fetchall():
            target = f" ON {server_name} "
            if target not in definition:
                raise ProviderError(f"converting {names.table}: cannot re-target trigger {definition}")
            statements.append(sql.SQL(definition.replace(target, f" ON {building.as_string(conn)} ", 1)))
        statements += copied_grants(conn, old, building)
    return statements


def unique_includes_partition_key(conn: psycopg.Connection, index: str, conversion: Conversion) -> bool:
    assert conversion.spec.partition is not None
    return bool(
        scalar(
            conn,
            "SELECT %s = ANY(ARRAY(SELECT attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indexrelid = to_regclass(%s)))",
            (conversion.spec.partition.column, conversion.names.relation(index).as_string(conn)),
        )
    )


# --- 2-4. capture, copy, replay ----------------------------------------------------------------------


def function_statement(function: sql.Identifier, body: str) -> Statement:
    """A trigger function that writes where its caller may not (the log, the copy): SECURITY DEFINER, no path."""
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS {}"
    ).format(function, sql.Literal(body))


def capture_statements(conn: psycopg.Connection, names: Names) -> list[Statement]:
    log, capture = names.relation(names.log), names.relation(names.capture)
    body = sql.SQL(
        "BEGIN INSERT INTO {} (old_row, new_row) VALUES ("
        "CASE WHEN TG_OP <> 'INSERT' THEN pg_catalog.to_jsonb(OLD) END, "
        "CASE WHEN TG_OP <> 'DELETE' THEN pg_catalog.to_jsonb(NEW) END); RETURN NULL; END"
    ).format(log)
    return [
        sql.SQL(
            "CREATE TABLE {} (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, old_row jsonb, new_row jsonb)"
        ).format(log),
        *rls_statements(log),  # nobody but the capture function (the migrating role) reads or writes it
        function_statement(capture, body.as_string(conn)),
        sql.SQL("CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
            sql.Identifier(names.capture), names.relation(names.table), capture
        ),
    ]


def copy_rows(conn: psycopg.Connection, conversion: Conversion, batch_pages: int, timeouts: Timeouts) -> None:
    """Every row, a range of pages per transaction (rows moved meanwhile are in the log)."""
    names = conversion.names
    old = names.relation(names.table)
    pages = int(
        scalar(
            conn,
            "SELECT pg_relation_size(to_regclass(%s)) / current_setting('block_size')::int",
            (old.as_string(conn),),
        )
        or 0
    )
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in conversion.columns)
    for start in range(0, pages + 1, batch_pages):
        batch = sql.SQL(
            "INSERT INTO {} ({}) SELECT {} FROM ONLY {} WHERE ctid >= {}::tid AND ctid < {}::tid ON CONFLICT DO NOTHING"
        ).format(
            names.relation(names.building),
            columns,
            columns,
            old,
            sql.Literal(f"({start},0)"),
            sql.Literal(f"({start + batch_pages},0)"),
        )
        # its foreign-key checks lock referenced rows while other tables' DDL runs: a deadlock is retried
        run_ddl(conn, [batch], timeouts, what=f"conversion of {names.table}: copy")


def replay_statements(conn: psycopg.Connection, conversion: Conversion, upto: int | None) -> list[Statement]:
    """Apply the logged changes (up to seq `upto`, or all) to the copy and remove them from the log."""
    names = conversion.names
    building, log = names.relation(names.building), names.relation(names.log)
    bound = sql.SQL("") if upto is None else sql.SQL(" AND seq <= {}").format(sql.Literal(upto))
    mentions = sql.SQL(
        "SELECT seq, 0 AS side, jsonb_populate_record(NULL::{b}, old_row) AS r FROM {log} "
        "WHERE old_row IS NOT NULL{bound} UNION ALL "
        "SELECT seq, 1, jsonb_populate_record(NULL::{b}, new_row) FROM {log} WHERE new_row IS NOT NULL{bound}"
    ).format(b=building, log=log, bound=bound)
    keys = sql.SQL(", ").join(sql.SQL("(m.r).{}").format(sql.Identifier(k)) for k in conversion.keys)
    own_keys = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(k)) for k in conversion.keys)
    fields = sql.SQL(", ").join(sql.SQL("(m.r).{}").format(sql.Identifier(c)) for c in conversion.columns)
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in conversion.columns)
    return [
        sql.SQL("DELETE FROM {b} t USING ({mentions}) m WHERE ({own}) = ({keys})").format(
            b=building, mentions=mentions, own=own_keys, keys=keys
        ),
        sql.SQL(
            "INSERT INTO {b} ({columns}) SELECT {fields} FROM (SELECT DISTINCT ON ({keys}) m.side, m.r "
            "FROM ({mentions}) m ORDER BY {keys}, m.seq DESC, m.side DESC) m WHERE m.side = 1"
        ).format(b=building, columns=columns, fields=fields, keys=keys, mentions=mentions),
        sql.SQL("DELETE FROM {} WHERE true{}").format(log, bound),
    ]


def replay(conn: psycopg.Connection, conversion: Conversion, batch: int) -> int:
    """One batch of the log, in one snapshot (an entry committed later stays for the next batch)."""
    log = conversion.names.relation(conversion.names.log)
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        upto = scalar(
            conn, sql.SQL("SELECT max(seq) FROM (SELECT seq FROM {} ORDER BY seq LIMIT %s) s").format(log), (batch,)
        )
        if upto is None:
            return 0
        count = int(scalar(conn, sql.SQL("SELECT count(*) FROM {} WHERE seq <= %s").format(log), (upto,)) or 0)
        for statement in replay_statements(conn, conversion, int(upto)):
            conn.execute(statement)
    return count


# --- 5-7. mirror, verify, swap -----------------------------------------------------------------------


def mirror_statements(
    conn: psycopg.Connection, conversion: Conversion, *, target: str, source: str, timing: str
) -> list[Statement]:
    """A trigger on `source` that applies each row change to `target` (and, BEFORE, skips `source`)."""
    names = conversion.names
    target_relation = names.relation(target)
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in conversion.keys)
    old_keys = sql.SQL(", ").join(sql.SQL("OLD.{}").format(sql.Identifier(k)) for k in conversion.keys)
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in conversion.columns)
    values = sql.SQL(", ").join(sql.SQL("NEW.{}").format(sql.Identifier(c)) for c in conversion.columns)
    body = sql.SQL(
        "BEGIN IF TG_OP <> 'INSERT' THEN DELETE FROM {t} WHERE ({keys}) = ({old_keys}); END IF; "
        "IF TG_OP <> 'DELETE' THEN INSERT INTO {t} ({columns}) VALUES ({values}); END IF; RETURN NULL; END"
    ).format(t=target_relation, keys=keys, old_keys=old_keys, columns=columns, values=values)
    mirror = names.relation(names.mirror)
    return [
        function_statement(mirror, body.as_string(conn)),
        sql.SQL("CREATE TRIGGER {} {} INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()").format(
            sql.Identifier(names.mirror), sql.SQL(timing), names.relation(source), mirror
        ),
    ]


def table_digest(conn: psycopg.Connection, relation: sql.Identifier, columns: list[str]) -> tuple[int, str]:
    """Row count and an order-independent checksum (sum of 64-bit md5 prefixes of each row's text)."""
    row = sql.SQL("ROW({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns))
    result = conn.execute(
        sql.SQL(
            "SELECT count(*), coalesce(sum(('x' || substr(md5({}::text), 1, 16))::bit(64)::bigint::numeric), 0)::text "
            "FROM {}"
        ).format(row, relation)
    ).fetchone()
    assert result is not None
    return int(result[0]), str(result[1])


def verify(conn: psycopg.Connection, conversion: Conversion, timeouts: Timeouts) -> tuple[int, str]:
    """Both tables in one snapshot (the mirror keeps them equal in every snapshot): counts and checksums."""
    names = conversion.names
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        old = table_digest(conn, names.relation(names.table), conversion.columns)
        new = table_digest(conn, names.relation(names.building), conversion.columns)
    if old != new:
        run_ddl(conn, leftover_statements(names), timeouts, what=f"conversion of {names.table}: undo")
        raise ProviderError(
            f"converting {names.schema}.{names.table}: verification failed (old {old[0]} rows, checksum {old[1]}; "
            f"copy {new[0]} rows, checksum {new[1]}); the copy was removed and the table is unchanged"
        )
    return old


View = tuple[str, str, str, list[str]]


def dependent_views(conn: psycopg.Connection, names: Names) -> list[View]:
    """(schema, name, definition, options) of views on the old table, their definitions fully qualified."""
    with conn.transaction():
        conn.execute("SET LOCAL search_path = ''")
        rows = conn.execute(
            "SELECT DISTINCT n.nspname, v.relname, pg_get_viewdef(v.oid), coalesce(v.reloptions, '{}') "
            "FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class "
            "JOIN pg_namespace n ON n.oid = v.relnamespace "
            "WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = to_regclass(%s) AND v.relkind = 'v' "
            "AND v.oid <> d.refobjid",
            (names.relation(names.table).as_string(conn),),
        ).fetchall()
    return [(schema, name, definition, list(options)) for schema, name, definition, options in rows]


def swap_statements(
    conn: psycopg.Connection, conversion: Conversion, rows: int, checksum: str, views: list[View]
) -> list[Statement | Deferred]:
    names = conversion.names
    old, building = names.relation(names.table), names.relation(names.building)
    locked: list[Statement | Deferred] = [  # both tables are locked up front (run_ddl's locks)
        sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(names.mirror), old),
        lambda conn_locked: stray_row_statements(conn_locked, conversion),
    ]
    statements: list[Statement] = [  # free the index names (primary key and uniques included) for the new table
        sql.SQL("ALTER INDEX {} RENAME TO {}").format(names.relation(index), sql.Identifier(kept_index(index)))
        for index in conversion.old_indexes
    ]
    statements += [
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(old, sql.Identifier(names.kept)),
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(building, sql.Identifier(names.table)),
    ]
    new = names.relation(names.table)
    primary = primary_key_index(conn, names)
    statements.append(
        sql.SQL("ALTER INDEX {} RENAME TO {}").format(
            names.relation(primary), sql.Identifier(f"{names.table}_pkey"[:63])
        )
    )
    statements += [
        sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
            new, sql.Identifier(bounded(f"{unique.name}_new")), sql.Identifier(unique.name)
        )
        for unique in conversion.spec.uniques
    ]
    statements += [
        sql.SQL("ALTER INDEX {} RENAME TO {}").format(names.relation(temporary), sql.Identifier(final))
        for temporary, final in conversion.index_renames
    ]
    statements += [
        sql.SQL("ALTER SEQUENCE {} OWNED BY {}").format(
            qualified(schema, sequence), sql.Identifier(names.schema, names.table, column)
        )
        for schema, sequence, column in owned_sequences(conn, names)
    ]
    for schema, view, definition, options in views:  # made again by name: they now select from the new table
        with_options = (
            sql.SQL(" WITH ({})").format(sql.SQL(", ").join(sql.SQL(o) for o in options)) if options else sql.SQL("")
        )
        statements.append(
            sql.SQL("CREATE OR REPLACE VIEW {}{} AS {}").format(
                qualified(schema, view), with_options, sql.SQL(definition.rstrip().rstrip(";"))
            )
        )
    statements += mirror_statements(conn, conversion, target=names.table, source=names.kept, timing="BEFORE")
    statements += [
        sql.SQL("COMMENT ON TABLE {} IS {}").format(
            names.relation(names.kept),
            sql.Literal(
                f"{VERIFIED_MARK}: {rows} rows, checksum {checksum}; converted to the partitioned "
                f"{names.schema}.{names.table}, writes here are redirected there; drop when no longer needed"
            ),
        ),
        sql.SQL("DROP TABLE {}").format(names.relation(names.log)),
        sql.SQL("DROP FUNCTION {}()").format(names.relation(names.capture)),
    ]
    return [*locked, *statements]


STRAY_MONTHS_QUERY = """
SELECT DISTINCT m, m + interval '1 month', to_char(m, 'YYYY_MM') FROM (
  SELECT date_trunc('month', {column})::timestamptz AS m FROM ONLY {default}
  WHERE {column} < date_trunc('month', now()) + ({premake} + 1) * interval '1 month'
) months ORDER BY m
"""


def stray_row_statements(conn: psycopg.Connection, conversion: Conversion) -> list[Statement]:
    """Rows a write moved, during the conversion, into a month the copy had no partition for (an UPDATE of
    the date, a back-dated INSERT) wait in its default partition: under the swap's lock each such month
    gets its partition and its rows, triggers off (they were applied when the row was written). Rows
    beyond the premade window stay in the default partition, as pg_partman leaves them."""
    spec, names = conversion.spec, conversion.names
    assert spec.partition is not None
    column, default = sql.Identifier(spec.partition.column), names.relation(default_partition_name(names.table))
    months = conn.execute(
        sql.SQL(STRAY_MONTHS_QUERY).format(column=column, default=default, premake=sql.Literal(conversion.premake))
    ).fetchall()
    if not months:
        return []
    building, owner = names.relation(names.building), owner_of(conversion)
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in conversion.columns)
    statements: list[Statement] = [
        sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(building, default),
        sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(default),
    ]
    for start, end, suffix in months:
        name = partition_name(names.table, suffix)
        part = names.relation(name)
        statements += [
            sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                part, building, sql.Literal(start), sql.Literal(end)
            ),
            partition_security(part, owner),
            sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(part),
            sql.SQL(
                "WITH moved AS (DELETE FROM {default} WHERE {column} >= {start} AND {column} < {end} "
                "RETURNING {columns}) INSERT INTO {part} ({columns}) SELECT {columns} FROM moved"
            ).format(
                default=default,
                column=column,
                start=sql.Literal(start),
                end=sql.Literal(end),
                columns=columns,
                part=part,
            ),
            sql.SQL("ALTER TABLE {} ENABLE TRIGGER USER").format(part),
        ]
        if name not in conversion.partitions:
            conversion.partitions.append(name)
    return [
        *statements,
        sql.SQL("ALTER TABLE {} ENABLE TRIGGER USER").format(default),
        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} DEFAULT").format(building, default),
    ]


def kept_index(index: str) -> str:
    return bounded(f"{index}_unpartitioned")


def primary_key_index(conn: psycopg.Connection, names: Names) -> str:
    return str(
        scalar(
            conn,
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = to_regclass(%s) AND i.indisprimary",
            (names.relation(names.building).as_string(conn),),
        )
    )


def owned_sequences(conn: psycopg.Connection, names: Names) -> list[tuple[str, str, str]]:
    """(schema, sequence, column) owned by the old table's columns (serial): they follow, or a drop takes them."""
    return [
        (str(schema), str(sequence), str(column))
        for schema, sequence, column in conn.execute(
            "SELECT n.nspname, s.relname, a.attname FROM pg_depend d JOIN pg_class s ON s.oid = d.objid "
            "JOIN pg_namespace n ON n.oid = s.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
            "WHERE d.classid = 'pg_class'::regclass AND d.refobjid = to_regclass(%s) AND d.deptype = 'a' "
            "AND s.relkind = 'S'",
            (names.relation(names.table).as_string(conn),),
        ).fetchall()
    ]
