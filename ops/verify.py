"""The live platform against the review's success metrics: one check per metric, a table, non-zero on failure.

Each check reads the live servers (the primary's catalogs and the stack's `monitoring` views, the
replicas, Patroni's REST API and etcd when thorbis:ha is on, PgBouncer's admin console, Redis) with the
connection details of the stack's outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
import redis

from components.connection import Endpoint
from components.kind import ProviderError
from components.outputs import APPLICATION_USER
from components.platform.local.ha import etcd, patroni
from components.platform.local.pgbouncer import AUTH_ROLE, CONSOLE_DATABASE
from ops.stack import StackAccess

Result = Literal["PASS", "FAIL", "SKIP"]
#: A pool whose oldest waiting client has waited this long is not healthy.
MAX_POOL_WAIT_SECONDS = 5
#: A replica further behind than this (replay) is not keeping up.
MAX_REPLAY_LAG_SECONDS = 60.0


@dataclass(frozen=True)
class CheckResult:
    check: str
    result: Result
    detail: str


#: What a check found: its result and a line of detail.
Finding = tuple[Result, str]


def verdict(ok: bool, detail: str) -> Finding:
    return ("PASS" if ok else "FAIL"), detail


def rows(access: StackAccess, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(**access.connection.conninfo(), autocommit=True) as conn:
        return conn.execute(query, params or None).fetchall()  # no parameters: its % signs are literal


def listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# --- the checks ---------------------------------------------------------------------------------------

RLS_QUERY = """
SELECT c.relname, c.relrowsecurity AND c.relforcerowsecurity
FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') ORDER BY 1
"""


def row_level_security(access: StackAccess) -> Finding:
    tables = rows(access, RLS_QUERY)
    unsecured = [name for name, secured in tables if not secured]
    detail = f"{len(tables) - len(unsecured)}/{len(tables)} public tables and partitions enabled and forced"
    return verdict(bool(tables) and not unsecured, detail + (f"; not: {listing(unsecured)}" if unsecured else ""))


#: What would let the API's roles past row level security: TRUNCATE (it ignores RLS), TRIGGER and REFERENCES
#: on a table, a permissive policy that lets them see or write every row, BYPASSRLS (or SUPERUSER) of theirs or
#: of a role they may become, or a role they belong to (`GRANT authenticated TO anon` signs every visitor in).
PAST_RLS_QUERY = """
SELECT format('%s holds %s on %s', r.rolname, p.privilege, c.relname)
FROM pg_class c CROSS JOIN pg_roles r CROSS JOIN unnest(ARRAY['TRUNCATE', 'TRIGGER', 'REFERENCES']) p(privilege)
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') AND r.rolname IN ('anon', 'authenticated')
  AND has_table_privilege(r.oid, c.oid, p.privilege)
UNION ALL
SELECT format('policy %s on %s lets %s %s every row', policyname, tablename, array_to_string(roles, ', '), cmd)
FROM pg_policies
WHERE schemaname = 'public' AND permissive = 'PERMISSIVE' AND roles && ARRAY['anon', 'authenticated', 'public']::name[]
  AND coalesce(qual, with_check) = 'true'
UNION ALL
SELECT CASE WHEN r.oid = g.oid THEN format('%s %s', r.rolname, a.what)
            ELSE format('%s may act as %s, which %s', r.rolname, g.rolname, a.what) END
FROM pg_roles r JOIN pg_roles g ON pg_has_role(r.oid, g.oid, 'MEMBER')
CROSS JOIN LATERAL (SELECT CASE WHEN g.rolsuper THEN 'is a superuser' ELSE 'bypasses RLS' END) a(what)
WHERE r.rolname IN ('anon', 'authenticated') AND (g.rolsuper OR g.rolbypassrls)
UNION ALL
SELECT format('%s is a member of %s', r.rolname, g.rolname)
FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member JOIN pg_roles g ON g.oid = m.roleid
WHERE r.rolname IN ('anon', 'authenticated')
ORDER BY 1
"""


def api_roles_within_rls(access: StackAccess) -> Finding:
    found = [line for (line,) in rows(access, PAST_RLS_QUERY)]
    detail = (
        "anon and authenticated: no TRUNCATE, TRIGGER or REFERENCES, no policy open to every row, no BYPASSRLS, "
        "member of no role"
    )
    return verdict(not found, f"{len(found)} way(s) past RLS: {listing(found, 10)}" if found else detail)


#: A foreign key is covered by a valid, non-partial index whose leading columns are the key's columns.
FK_INDEX_QUERY = """
SELECT c.conrelid::regclass::text, c.conname,
       EXISTS (SELECT 1 FROM pg_index i
               WHERE i.indrelid = c.conrelid AND i.indisvalid AND i.indpred IS NULL
                 AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] @> c.conkey
                 AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] <@ c.conkey)
FROM pg_constraint c
WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace AND c.conparentid = 0
ORDER BY 1, 2
"""


def foreign_key_indexes(access: StackAccess) -> Finding:
    keys = rows(access, FK_INDEX_QUERY)
    uncovered = [f"{table}.{name}" for table, name, covered in keys if not covered]
    detail = f"{len(keys) - len(uncovered)}/{len(keys)} foreign keys led by a valid index"
    return verdict(not uncovered, detail + (f"; not: {listing(uncovered)}" if uncovered else ""))


def invalid_indexes(access: StackAccess) -> Finding:
    found = rows(access, "SELECT schema_name || '.' || index_name FROM monitoring.invalid_indexes ORDER BY 1")
    names = [name for (name,) in found]
    return verdict(not names, f"INVALID: {listing(names)}" if names else "none (monitoring.invalid_indexes)")


REPLICATION_QUERY = """
SELECT application_name, state, replay_lag_bytes, coalesce(replay_lag_seconds, 0)
FROM monitoring.replication_lag ORDER BY 1
"""


def replicas_streaming(access: StackAccess) -> Finding:
    replicas = access.connection.replicas
    if not replicas:
        return "SKIP", "the stack declares no replica"
    standbys = rows(access, REPLICATION_QUERY)
    streaming = [row for row in standbys if row[1] == "streaming"]
    parts = [
        f"{name}: {state}, {lag_bytes} B, {float(seconds):.3f} s behind" for name, state, lag_bytes, seconds in standbys
    ]
    missing = len(replicas) - len(streaming)
    if missing > 0:
        ports = listing([str(replica.port) for replica in replicas])
        parts.append(f"{missing} of {len(replicas)} not streaming (replica ports {ports})")
    slow = [row[0] for row in streaming if float(row[3]) > MAX_REPLAY_LAG_SECONDS]
    if slow:
        parts.append(f"more than {MAX_REPLAY_LAG_SECONDS:.0f} s behind: {listing(slow)}")
    return verdict(missing <= 0 and not slow, "; ".join(parts))


def pgbouncer_pools(access: StackAccess) -> Finding:
    connection = access.connection
    if connection.pooler is None:
        return "SKIP", "the stack has no PgBouncer"
    through = select_one_through_pooler(access, connection.pooler)  # first: the application pool is shown
    console = psycopg.connect(
        **connection.conninfo(
            connection.pooler, user=AUTH_ROLE, password=access.pooler_auth_password, database=CONSOLE_DATABASE
        ),
        autocommit=True, cursor_factory=psycopg.ClientCursor, prepare_threshold=None,
    )  # fmt: skip
    with console:
        cursor = console.execute("SHOW POOLS")
        columns = [column.name for column in cursor.description or []]
        pools = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    databases = [name for name in (connection.database, connection.read_database) if name is not None]
    ours = [pool for pool in pools if pool.get("database") in databases]
    stuck = [
        f"{pool['user']} ({pool['maxwait']} s)"
        for pool in ours
        if int(pool.get("maxwait") or 0) >= MAX_POOL_WAIT_SECONDS
    ]
    detail = f"{len(ours)} pool(s) on {listing(databases)}, none waiting {MAX_POOL_WAIT_SECONDS} s or more; {through}"
    if stuck:
        detail = f"clients waiting: {listing(stuck)}; {through}"
    return verdict(not stuck and through.endswith("ok"), detail)


def select_one_through_pooler(access: StackAccess, pooler: Endpoint) -> str:
    """A query as the applications' login role, through the pooler (auth_query, pool, server), and where
    the read pool's transactions land."""
    if not access.authenticator_password:
        return "SELECT 1 through it not tried (no thorbis:authenticatorPassword)"
    with application_session(access, pooler) as conn:
        row = conn.execute("SELECT 1").fetchone()
    through = "SELECT 1 through it as authenticator: " + ("ok" if row == (1,) else f"got {row}")
    return through if access.connection.read_database is None else f"{read_pool_server(access, pooler)}; {through}"


def application_session(access: StackAccess, pooler: Endpoint, database: str | None = None) -> psycopg.Connection:
    conninfo = access.connection.conninfo(
        pooler, user=APPLICATION_USER, password=access.authenticator_password, database=database
    )
    return psycopg.connect(**conninfo, prepare_threshold=None, autocommit=True)


def read_pool_server(access: StackAccess, pooler: Endpoint) -> str:
    """Where the read pool's transactions land now: a replica, or the primary when none qualifies."""
    database = access.connection.read_database
    with application_session(access, pooler, database) as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return f"{database} reads from " + ("a replica" if row == (True,) else "the primary (no replica qualifies)")


def redis_with_auth(access: StackAccess) -> Finding:
    cache = access.connection.redis
    if cache is None:
        return "SKIP", "the stack has no Redis"
    options: dict[str, Any] = {"host": cache.host, "port": cache.port, "socket_timeout": 5}
    try:
        with redis.Redis(**options, password=access.connection.redis_password) as client:
            answered = bool(client.ping())
    except redis.AuthenticationError:  # a password removed or changed by hand: said below, not an error
        answered = False
    try:
        with redis.Redis(**options) as anonymous:
            anonymous.ping()
        refused = False
    except redis.AuthenticationError:
        refused = True
    detail = f"PING with the password: {'PONG' if answered else 'no answer'}; "
    detail += f"without: {'refused' if refused else 'ANSWERED (no password required)'}"
    return verdict(answered and refused, detail)


CRON_QUERY = """
SELECT j.jobname, last.status, last.return_message
FROM cron.job j
LEFT JOIN LATERAL (SELECT d.status, d.return_message FROM cron.job_run_details d
                   WHERE d.jobid = j.jobid ORDER BY d.runid DESC LIMIT 1) last ON true
WHERE j.active ORDER BY 1
"""


def cron_jobs(access: StackAccess) -> Finding:
    jobs = rows(access, CRON_QUERY)
    failed = [f"{name}: {(message or '').strip()[:80]}" for name, status, message in jobs if status == "failed"]
    ran = sum(1 for _, status, _ in jobs if status is not None)
    detail = (
        f"{len(jobs)} active job(s): {ran} ran, {len(failed)} of them failed last time, {len(jobs) - ran} not run yet"
    )
    return verdict(not failed, detail + (f"; failed: {listing(failed, 3)}" if failed else ""))


def partitions_ahead(access: StackAccess) -> Finding:
    (sets,) = rows(access, "SELECT count(*) FROM partman.part_config")
    short = rows(
        access, "SELECT parent_table, premake, partitions_ahead FROM monitoring.partitions_missing_ahead ORDER BY 1"
    )
    missing = [f"{parent} ({ahead}/{premake})" for parent, premake, ahead in short]
    detail = f"{sets[0] - len(missing)}/{sets[0]} partition sets have their premake months made ahead"
    return verdict(not missing, detail + (f"; short: {listing(missing)}" if missing else ""))


def ha_ports(access: StackAccess) -> tuple[list[int], list[int]]:
    """The Patroni REST and etcd client ports of a stack with ha (both empty without)."""
    ha = access.connection.ha
    if ha is None:
        return [], []
    return [e.port for e in ha.patroni], [e.port for e in ha.etcd]


def ha_members(access: StackAccess) -> Finding:
    """Patroni's view: one leader, every member running or streaming, each replica's lag."""
    rest, _ = ha_ports(access)
    if not rest:
        return "SKIP", "thorbis:ha is off"
    cluster = patroni.cluster_status(rest)
    if cluster is None:
        return "FAIL", f"no Patroni REST API answers (ports {listing([str(p) for p in rest])})"
    members = cluster.get("members", [])
    leaders = [m["name"] for m in members if m.get("role") == "leader"]
    parts = [
        f"{m['name']}: {m.get('role')}, {m.get('state')}, timeline {m.get('timeline')}"
        + (f", lag {m.get('lag')} B" if m.get("role") != "leader" else "")
        for m in members
    ]
    down = [m["name"] for m in members if m.get("state") not in ("running", "streaming")]
    missing = len(rest) - len(members)
    if missing > 0:
        parts.append(f"{missing} of {len(rest)} nodes not in the cluster")
    detail = f"leader {', '.join(leaders) or 'NONE'}; " + "; ".join(parts)
    return verdict(len(leaders) == 1 and not down and missing <= 0, detail)


def ha_synchronous_standby(access: StackAccess) -> Finding:
    rest, _ = ha_ports(access)
    if not rest:
        return "SKIP", "thorbis:ha is off"
    cluster = patroni.cluster_status(rest) or {}
    config = next((c for p in rest if (c := patroni.dynamic_configuration(p)) is not None), None)
    if config is None:
        return "FAIL", "no Patroni REST API answers"
    if not config.get("synchronous_mode"):
        return "PASS", "asynchronous mode (thorbis:ha.synchronous false): a failover may lose the last commits"
    standbys = [m["name"] for m in cluster.get("members", []) if m.get("role") == "sync_standby"]
    detail = (
        f"synchronous standby: {', '.join(standbys)}" if standbys else "no synchronous standby: commits unprotected"
    )
    return verdict(bool(standbys), detail)


def etcd_health(access: StackAccess) -> Finding:
    _, members = ha_ports(access)
    if not members:
        return "SKIP", "thorbis:ha is off"
    healthy = [port for port in members if etcd.healthy(port)]
    detail = f"{len(healthy)}/{len(members)} etcd members healthy"
    if len(healthy) < len(members):
        down = [str(port) for port in members if port not in healthy]
        quorum = len(healthy) > len(members) // 2
        detail += f" (down: client ports {listing(down)}); quorum {'kept' if quorum else 'LOST: no failover possible'}"
    return verdict(len(healthy) == len(members), detail)


CHECKS: tuple[tuple[str, Callable[[StackAccess], Finding]], ...] = (
    ("RLS on every table", row_level_security),
    ("API roles within RLS", api_roles_within_rls),
    ("FK index coverage", foreign_key_indexes),
    ("no INVALID index", invalid_indexes),
    ("replicas streaming", replicas_streaming),
    ("HA leader and members", ha_members),
    ("HA synchronous standby", ha_synchronous_standby),
    ("etcd health", etcd_health),
    ("PgBouncer pools", pgbouncer_pools),
    ("Redis with auth", redis_with_auth),
    ("pg_cron jobs succeeding", cron_jobs),
    ("partitions made ahead", partitions_ahead),
)


def run_check(name: str, check: Callable[[StackAccess], Finding], access: StackAccess) -> CheckResult:
    """A check that cannot even ask (a server down, a view missing) has failed, with the reason."""
    try:
        return CheckResult(name, *check(access))
    except (psycopg.Error, redis.RedisError, OSError, ProviderError) as error:
        reason = " ".join(str(error).split())[:160] or type(error).__name__
        return CheckResult(name, "FAIL", reason)


def verify(access: StackAccess) -> list[CheckResult]:
    return [run_check(name, check, access) for name, check in CHECKS]


def render_table(results: list[CheckResult]) -> str:
    headers = ("check", "result", "detail")
    table = [(r.check, r.result, r.detail) for r in results]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *table, strict=False)][:2]
    lines = [
        f"{cells[0].ljust(widths[0])}  {cells[1].ljust(widths[1])}  {cells[2]}".rstrip()
        for cells in (headers, ("-" * widths[0], "-" * widths[1], "-" * 6), *table)
    ]
    return "\n".join(lines) + "\n"
