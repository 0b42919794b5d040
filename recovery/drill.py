"""`scripts/dr-drill STACK`: a crash that takes the host, and how much of what was committed comes back.

1. Write known data: a marker table of the drill's own, and companies and customers (real tables).
2. Take a full backup (`scripts/backup`), then commit more companies and customers AFTER it: only WAL
   replay can bring those back. Fingerprint the database: per-table row counts and checksums, RLS flags,
   policies, indexes (the marker table apart: it keeps changing).
3. A writer commits one marker row after another, as an application would, for `--write-seconds` (by
   default thorbis:backup.archiveTimeout + 5 s + a random part of it, so the crash falls anywhere in the
   archive's cycle), and then, while it still writes, the host is lost: every process of the stack is
   killed at once (SIGKILL: primary, replicas, their archiver, PgBouncer, the read router, Redis) and
   everything under thorbis:stateDir is removed except the backup repository. Nothing is flushed or
   switched before: no `pg_switch_wal()`, no wait for the archive. Whatever the archiver had not pushed
   yet is lost, as in a real crash.
4. Re-provision from nothing with the same program and config: `pulumi up --refresh`. The primary's data
   directory is missing and the repository holds a backup, so it is restored to the end of the archived
   WAL (thorbis:backup.restoreOnProvision), and says so; replicas are re-made from it.
5. Compare the fingerprints; count the writer's committed rows that did not come back and how long before
   the crash the oldest of them was committed; check replicas stream, secrets log in, `pulumi preview` is
   empty.

Prints the RTO (seconds from the crash to verified) and the RPO as measured (committed rows lost and the
window they were committed in, against the bound archiveTimeout), writes the report as JSON with
--report, and exits 0 only when everything matched and no row committed longer ago than the bound (plus
the seconds one archive push takes) was lost. The drill's rows are removed at the end unless --keep-data.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pulumi.automation as auto
import redis
from psycopg import sql

from components.database.declared.access import load_access
from components.kind import ProviderError
from components.platform.local import postgres_files as pg
from components.platform.local import process
from components.platform.local.postgres import TOKEN as POSTGRES_SERVER
from config import ConfigError
from config.settings import attribute_of
from recovery.backup import take_backup
from recovery.stack import OpenStack, OperationError, open_stack

DRILL_SCHEMA = "dr_drill"
MARKER_TABLE = "marker"
#: Not compared: pg_cron's run history and pg_partman's bookkeeping change on their own schedule.
SKIPPED_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast", "cron", "partman")
#: What archiving adds to archive_timeout before a segment is in the repository: the switch happens at the
#: checkpointer's next look, then one `pgbackrest archive-push` (about a second here, more on a busy host).
PUSH_ALLOWANCE_SECONDS = 5.0


def crash_after(bound: int) -> float:
    """How long the writer runs before the crash, by default: past the bound and the push, so rows older
    than both exist at the crash, plus a random part of the bound, so the crash falls anywhere in the
    archive's cycle (a crash right after a forced switch loses little, one right before it the most)."""
    return round(bound + PUSH_ALLOWANCE_SECONDS + secrets.SystemRandom().uniform(0, bound), 1)


Fingerprint = dict[str, Any]


@dataclass
class Report:
    stack: str
    replicas_expected: int
    backup_label: str = ""
    backup_seconds: float = 0.0
    rows_before_backup: int = 0
    rows_after_backup: int = 0
    tables_compared: int = 0
    rows_compared: int = 0
    mismatched_tables: list[str] = field(default_factory=list)
    rls_equal: bool = False
    policies_equal: bool = False
    indexes_equal: bool = False
    invalid_indexes: int = -1
    replicas_streaming: int = 0
    replicas_have_latest_row: bool = False
    secrets_ok: bool = False
    restored_from_backup: bool = False
    restored_to: dict[str, Any] = field(default_factory=dict)
    reprovision_seconds: float = 0.0
    rto_seconds: float = 0.0
    bound_seconds: int = 0
    rows_committed_while_writing: int = 0
    rpo_rows_lost: int = -1
    loss_window_seconds: float = 0.0
    rows_lost_beyond_bound: int = -1
    preview_changes: dict[str, int] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.tables_compared > 0
            and not self.mismatched_tables
            and self.rls_equal
            and self.policies_equal
            and self.indexes_equal
            and self.invalid_indexes == 0
            and self.replicas_streaming == self.replicas_expected
            and (self.replicas_have_latest_row or self.replicas_expected == 0)
            and self.secrets_ok
            and self.restored_from_backup
            and self.rpo_rows_lost >= 0
            and self.rows_lost_beyond_bound == 0
            and not self.preview_changes
        )

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# --- known data ----------------------------------------------------------------------------------------


def write_known_data(conn: psycopg.Connection, tag: str, phase: str, first_id: int, rows: int) -> set[int]:
    """Marker rows, and companies with customers (real tables, RLS and all), committed."""
    marker = sql.Identifier(DRILL_SCHEMA, MARKER_TABLE)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(DRILL_SCHEMA)))
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (id bigint PRIMARY KEY, phase text NOT NULL, payload text NOT NULL, "
            "written_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        ).format(marker)
    )
    ids = set(range(first_id, first_id + rows))
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (id, phase, payload) "
                "SELECT g, %s, md5(%s::text || g) FROM generate_series(%s::bigint, %s::bigint) g"
            ).format(marker),
            (phase, tag, first_id, first_id + rows - 1),
        )
        for index in range(max(1, rows // 100)):
            slug = f"dr-drill-{tag}-{phase}-{index}"
            row = conn.execute(
                sql.SQL("INSERT INTO {} (name, slug) VALUES (%s, %s) RETURNING id").format(
                    sql.Identifier("public", "companies")
                ),
                (f"DR drill {tag} {phase} {index}", slug),
            ).fetchone()
            assert row is not None
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (company_id, company_name) SELECT %s, %s::text || g FROM generate_series(1, 10) g"
                ).format(sql.Identifier("public", "customers")),
                (row[0], f"drill customer {index}-"),
            )
    return ids


def remove_known_data(conn: psycopg.Connection, tag: str) -> None:
    conn.execute(
        sql.SQL("DELETE FROM {} WHERE slug LIKE %s").format(sql.Identifier("public", "companies")),
        (f"dr-drill-{tag}-%",),
    )
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(DRILL_SCHEMA)))


class Writer(threading.Thread):
    """The application at the moment of the crash: one marker row per transaction, committed one after
    another; each acknowledged commit is remembered with the time it was acknowledged."""

    def __init__(self, opened: OpenStack, tag: str, first_id: int) -> None:
        super().__init__(name="dr-drill writer", daemon=True)
        self.opened, self.tag, self.next_id = opened, tag, first_id
        self.committed: dict[int, float] = {}  # id -> time.time() of the acknowledgement

    def run(self) -> None:
        insert = sql.SQL("INSERT INTO {} (id, phase, payload) VALUES (%s, 'crash', md5(%s))").format(
            sql.Identifier(DRILL_SCHEMA, MARKER_TABLE)
        )
        try:
            with self.opened.admin() as conn:
                while True:
                    conn.execute(insert, (self.next_id, f"{self.tag}{self.next_id}"))
                    self.committed[self.next_id] = time.time()
                    self.next_id += 1
                    time.sleep(0.01)
        except psycopg.Error:
            return  # the crash: the commit in flight was never acknowledged


# --- fingerprints ---------------------------------------------------------------------------------------


def user_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """Every table of ours, but the marker table: the writer changes it up to the crash (compared by ids)."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'r' AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg_temp%%' ORDER BY 1, 2",
        (list(SKIPPED_SCHEMAS),),
    ).fetchall()
    return [(str(schema), str(table)) for schema, table in rows if (schema, table) != (DRILL_SCHEMA, MARKER_TABLE)]


def fingerprint(conn: psycopg.Connection) -> Fingerprint:
    """What must be identical after the restore: rows (count and checksum per table), RLS, policies, indexes."""
    tables: dict[str, list[Any]] = {}
    for schema, table in user_tables(conn):
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM {} AS t"
            ).format(sql.Identifier(schema, table))
        ).fetchone()
        tables[f"{schema}.{table}"] = [int(row[0]), str(row[1])] if row else [0, ""]
    rls = conn.execute(
        "SELECT n.nspname || '.' || c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND n.nspname <> ALL(%s) "
        "ORDER BY 1",
        (list(SKIPPED_SCHEMAS),),
    ).fetchall()
    policies = conn.execute(
        "SELECT schemaname, tablename, policyname, cmd, coalesce(qual, ''), coalesce(with_check, '') "
        "FROM pg_policies ORDER BY 1, 2, 3"
    ).fetchall()
    indexes = conn.execute(
        "SELECT schemaname, indexname, indexdef FROM pg_indexes WHERE schemaname <> ALL(%s) ORDER BY 1, 2",
        (list(SKIPPED_SCHEMAS),),
    ).fetchall()
    invalid = conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()
    return {
        "tables": tables,
        "rls": [list(row) for row in rls],
        "policies": [list(row) for row in policies],
        "indexes": [list(row) for row in indexes],
        "invalid_indexes": int(invalid[0]) if invalid else -1,
    }


def marker_ids(conn: psycopg.Connection) -> set[int]:
    """The marker rows there are (none when the table is missing: a server initialised empty)."""
    exists = conn.execute("SELECT to_regclass(%s)", (f"{DRILL_SCHEMA}.{MARKER_TABLE}",)).fetchone()
    if not exists or exists[0] is None:
        return set()
    rows = conn.execute(sql.SQL("SELECT id FROM {}").format(sql.Identifier(DRILL_SCHEMA, MARKER_TABLE))).fetchall()
    return {int(row[0]) for row in rows}


# --- destruction and re-provisioning --------------------------------------------------------------------


def crash_host(opened: OpenStack) -> list[str]:
    """The host is lost: every process of the stack killed at once (SIGKILL: nothing is flushed, switched
    or archived first), then everything under its state directory removed except the backup repository
    (which lives on storage that survives the machine)."""
    state_dir = opened.settings.state_dir
    pidfiles = ("pgbouncer/pgbouncer.pid", "router/router.pid", "redis/redis.pid")
    for pidfile in (state_dir / name for name in pidfiles):
        pid = process.read_pid(pidfile)  # Redis renames its process: it may not name its directory
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
    pg.stop_working_in(state_dir)  # postmasters and their backends, walsenders, archivers, archive-push
    repository = Path(opened.repository.path).resolve()
    removed = []
    for child in sorted(state_dir.iterdir()):
        if repository == child.resolve() or repository.is_relative_to(child.resolve()):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
        removed.append(child.name)
    held = [port for port in opened.settings.all_ports.values() if process.port_open(port)]
    if held:
        raise OperationError(f"ports {held} still answer after the host was lost")
    return removed


def reprovision(opened: OpenStack) -> auto.UpResult:
    """The same program and config, from nothing: refresh forgets the servers that are gone, up makes them."""
    try:
        return opened.stack.up(refresh=True)
    except auto.CommandError as error:
        raise OperationError(f"`pulumi up --refresh` failed while re-provisioning:\n{error}") from error


def replicas_streaming(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").fetchone()
    return int(row[0]) if row else 0


def replicas_have(opened: OpenStack, latest_id: int) -> bool:
    query = sql.SQL("SELECT 1 FROM {} WHERE id = %s").format(sql.Identifier(DRILL_SCHEMA, MARKER_TABLE))
    for endpoint in opened.connection.replicas:
        deadline = time.monotonic() + 30
        with opened.admin(endpoint) as replica:
            while replica.execute(query, (latest_id,)).fetchone() is None:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.2)
    return True


def secrets_work(opened: OpenStack) -> bool:
    """The login roles' and Redis's passwords from the stack's config open the re-provisioned platform."""
    settings, connection = opened.settings, opened.connection
    if connection.pooler is None or connection.redis is None:
        return False
    try:
        for role, key in ((role.name, role.password) for role in load_access().roles if role.password):
            secret = getattr(settings, attribute_of(key))
            if secret is None:
                return False
            login = connection.conninfo(connection.pooler, user=role, password=secret.get_secret_value())
            with psycopg.connect(**login, prepare_threshold=None) as conn:
                conn.execute("SELECT 1")
        cache_at, password = connection.redis, connection.redis_password
        with redis.Redis(host=cache_at.host, port=cache_at.port, password=password, socket_timeout=5) as cache:
            return bool(cache.ping())
    except (psycopg.Error, redis.RedisError):
        return False


def changes_of(preview: auto.PreviewResult) -> dict[str, int]:
    """What `pulumi preview` would do, by operation, leaving out the unchanged."""
    named = {str(getattr(kind, "value", kind)): count for kind, count in preview.change_summary.items()}
    return {kind: count for kind, count in named.items() if kind != "same" and count}


def timeline(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()
    return int(row[0]) if row else 0


# --- the drill ------------------------------------------------------------------------------------------


def say(message: str) -> None:
    print(f"dr-drill: {message}", flush=True)


def run_drill(opened: OpenStack, rows: int, keep_data: bool, write_seconds: float) -> Report:
    settings = opened.settings
    report = Report(
        stack=settings.stack,
        replicas_expected=settings.replicas.count,
        bound_seconds=settings.backup.archive_timeout_seconds,
    )
    tag = secrets.token_hex(3)
    with opened.admin() as conn:
        known = write_known_data(conn, tag, "before", 1, rows)
        report.rows_before_backup = len(known)
    say(f"wrote {rows} marker rows and {max(1, rows // 100)} companies with customers; taking a full backup")
    backup = take_backup(opened, "full")
    report.backup_label, report.backup_seconds = backup.label, backup.seconds
    with opened.admin() as conn:
        after = write_known_data(conn, tag, "after", rows + 1, max(1, rows // 10))
        report.rows_after_backup = len(after)
        before = fingerprint(conn)
        timeline_before = timeline(conn)
    known |= after
    say(f"backup {backup.label} in {backup.seconds} s, rows committed after it; writing for {write_seconds} s")
    writer = Writer(opened, tag, max(known) + 1)
    writer.start()
    time.sleep(write_seconds)  # how long the application runs before the crash: the scenario, not a wait
    crashed_at, disaster = time.time(), time.monotonic()
    report.removed = crash_host(opened)
    writer.join(timeout=30)
    say(f"host lost: every process killed, removed {', '.join(report.removed)} (kept the repository); pulumi up")
    started = time.monotonic()
    reprovision(opened)
    report.reprovision_seconds = round(time.monotonic() - started, 1)
    say(f"re-provisioned in {report.reprovision_seconds} s; comparing")
    with opened.admin() as conn:
        restored = fingerprint(conn)
        found = marker_ids(conn)
        report.replicas_streaming = replicas_streaming(conn)
        # a restore ends its recovery on a new timeline; an empty initdb would have no marker table
        report.restored_from_backup = timeline(conn) > timeline_before and bool(found)
    report.replicas_have_latest_row = bool(found) and replicas_have(opened, max(found))
    report.rto_seconds = round(time.monotonic() - disaster, 1)
    measure_loss(report, known, writer.committed, found, crashed_at)
    compare(report, before, restored)
    report.restored_to = restore_outcome(opened)
    report.secrets_ok = secrets_work(opened)
    say("verified; previewing")
    report.preview_changes = changes_of(opened.stack.preview())
    if not keep_data:
        with opened.admin() as conn:
            remove_known_data(conn, tag)
    return report


def measure_loss(
    report: Report, known: set[int], committed: dict[int, float], found: set[int], crashed_at: float
) -> None:
    """Committed rows that did not come back, and how long before the crash the oldest of them was
    acknowledged. The rows written before the writer started are older than the bound by then."""
    lost = {row: acknowledged for row, acknowledged in committed.items() if row not in found}
    limit = report.bound_seconds + PUSH_ALLOWANCE_SECONDS
    report.rows_committed_while_writing = len(committed)
    report.rpo_rows_lost = len(lost) + len(known - found)
    report.loss_window_seconds = round(crashed_at - min(lost.values()), 1) if lost else 0.0
    report.rows_lost_beyond_bound = len(known - found) + sum(1 for t in lost.values() if crashed_at - t > limit)


def compare(report: Report, before: Fingerprint, after: Fingerprint) -> None:
    report.tables_compared = len(before["tables"])
    report.rows_compared = sum(count for count, _ in before["tables"].values())
    report.mismatched_tables = sorted(
        name
        for name in before["tables"].keys() | after["tables"].keys()
        if before["tables"].get(name) != after["tables"].get(name)
    )
    report.rls_equal = before["rls"] == after["rls"]
    report.policies_equal = before["policies"] == after["policies"]
    report.indexes_equal = before["indexes"] == after["indexes"]
    report.invalid_indexes = after["invalid_indexes"]


def restore_outcome(opened: OpenStack) -> dict[str, Any]:
    """What the primary's create said it restored to (its `restoredTo` output)."""
    deployment = opened.stack.export_stack().deployment or {}
    for resource in deployment.get("resources") or []:
        if resource.get("type") == POSTGRES_SERVER:
            return dict((resource.get("outputs") or {}).get("restoredTo") or {})
    return {}


def print_report(report: Report) -> None:
    restored = report.restored_to
    lines = [
        f"DR drill of stack '{report.stack}': {'PASSED' if report.ok else 'FAILED'}",
        f"  backup                 {report.backup_label} ({report.backup_seconds} s)",
        f"  restored to            WAL {restored.get('lsn', '?')}, last commit {restored.get('lastCommit', '?')}; "
        f"archived segments not replayed: {restored.get('segmentsNotReplayed', '?')}",
        f"  tables compared        {report.tables_compared} ({report.rows_compared} rows), "
        f"mismatched: {', '.join(report.mismatched_tables) or 'none'}",
        f"  RLS / policies / index {report.rls_equal} / {report.policies_equal} / {report.indexes_equal} "
        f"(invalid indexes: {report.invalid_indexes})",
        f"  replicas streaming     {report.replicas_streaming} of {report.replicas_expected} "
        f"(latest row on each: {report.replicas_have_latest_row})",
        f"  secrets from config    {'work' if report.secrets_ok else 'FAIL'}",
        f"  preview afterwards     {report.preview_changes or 'no changes'}",
        f"  RTO                    {report.rto_seconds} s "
        f"(crash to verified; pulumi up {report.reprovision_seconds} s)",
        f"  RPO                    {report.rpo_rows_lost} committed rows lost (of "
        f"{report.rows_committed_while_writing} the writer committed), from the last "
        f"{report.loss_window_seconds} s before the crash",
        f"  bound                  thorbis:backup.archiveTimeout {report.bound_seconds} s + "
        f"{PUSH_ALLOWANCE_SECONDS:.0f} s for the push; rows lost that were committed earlier: "
        f"{report.rows_lost_beyond_bound}",
    ]
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/dr-drill", description="Disaster-recovery drill of a local stack.")
    parser.add_argument("stack", help="the Pulumi stack, e.g. dev")
    parser.add_argument("--rows", type=int, default=1000, help="marker rows written before the backup (default 1000)")
    parser.add_argument("--report", type=Path, help="also write the report here, as JSON")
    parser.add_argument(
        "--write-seconds",
        type=float,
        help="seconds the writer commits before the crash (default: archiveTimeout + 5 + a random part of it)",
    )
    parser.add_argument("--work-dir", type=Path, help="the project directory (default: this clone)")
    parser.add_argument("--keep-data", action="store_true", help="leave the drill's rows in the database")
    parser.add_argument("--allow-prod", action="store_true", help="run on prod too (it stops every server)")
    args = parser.parse_args(argv)
    try:
        opened = open_stack(args.stack, args.work_dir)
        if opened.settings.is_prod and not args.allow_prod:
            raise OperationError("the drill stops and wipes every server of the stack: on prod, pass --allow-prod")
        if not opened.settings.backup.restore_on_provision:
            raise OperationError(
                f"stack '{args.stack}': thorbis:backup.restoreOnProvision is false, so `pulumi up` would not "
                "restore the backup; set it to true for the drill"
            )
        bound = opened.settings.backup.archive_timeout_seconds
        write_seconds = args.write_seconds or crash_after(bound)
        report = run_drill(opened, args.rows, args.keep_data, write_seconds)
    except (OperationError, ConfigError, ProviderError, psycopg.Error) as error:
        print(f"dr-drill: {error}", file=sys.stderr)
        return 2
    print_report(report)
    if args.report:
        args.report.write_text(json.dumps(report.as_json(), indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
