"""Rules that involve more than one key or the stack's name, checked after each key is valid on its own.

Each rule names the top-level keys it reads (`needs`); a rule is skipped when one of them failed
validation, so a bad value is reported once, not again as a consequence elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from config.errors import Problem, show_value
from config.gucs import guc_problems
from config.settings import NAMESPACE, ROLE_PASSWORD_KEYS, SERVER_PASSWORD_KEYS, StackSettings, attribute_of

MAX_PORT = 65535


@dataclass(frozen=True)
class Rule:
    """A check over valid settings, run only when none of the keys it `needs` failed validation."""

    needs: frozenset[str]
    check: Callable[[StackSettings], list[Problem]]


def check_rules(settings: StackSettings, failed: Collection[str]) -> list[Problem]:
    """Every problem found by the rules that can run, given the top-level keys that `failed`."""
    problems: list[Problem] = []
    for rule in RULES:
        if not rule.needs & set(failed):
            problems.extend(rule.check(settings))
    return problems


def _key(name: str) -> str:
    return f"{NAMESPACE}:{name}"


def _set_secret(stack: str, name: str) -> str:
    return f"`pulumi config set --secret -s {stack} {_key(name)}` (it prompts for the value)"


def _prod_keeps_data(settings: StackSettings) -> list[Problem]:
    if not (settings.is_prod and settings.allow_data_loss):
        return []
    reason = "must be false on prod, which never drops or recreates data (remove the key or set it to false)"
    return [Problem(_key("allowDataLoss"), "true", reason)]


def _prod_has_replicas(settings: StackSettings) -> list[Problem]:
    if not settings.is_prod or settings.replicas.count >= 1:
        return []
    reason = f"prod needs at least 1 streaming replica (set {_key('replicas.count')} >= 1)"
    return [Problem(_key("replicas.count"), show_value(settings.replicas.count), reason)]


def _secret_required(name: str) -> Callable[[StackSettings], list[Problem]]:
    def check(settings: StackSettings) -> list[Problem]:
        if settings.platform == "external" or getattr(settings, attribute_of(name)) is not None:
            return []
        reason = f"required on platform {settings.platform}; set it with {_set_secret(settings.stack, name)}"
        return [Problem(_key(name), None, reason)]

    return check


#: Login roles an external server such as Supabase has already: adopted and never altered there, so their
#: password is needed only where the stack creates them.
EXISTING_ON_EXTERNAL = frozenset({"authenticatorPassword"})


def _role_password_required(name: str) -> Callable[[StackSettings], list[Problem]]:
    def check(settings: StackSettings) -> list[Problem]:
        adopted = name in EXISTING_ON_EXTERNAL and settings.platform == "external"
        if adopted or getattr(settings, attribute_of(name)) is not None:
            return []
        where = "on platforms local and docker" if name in EXISTING_ON_EXTERNAL else "on every platform"
        reason = f"required {where} (a login role's password); set it with {_set_secret(settings.stack, name)}"
        return [Problem(_key(name), None, reason)]

    return check


def _external_dsn_required(settings: StackSettings) -> list[Problem]:
    if settings.platform != "external" or settings.external_dsn is not None:
        return []
    reason = (
        "required on platform external: the postgres:// URL of the server; "
        f"set it with {_set_secret(settings.stack, 'externalDsn')}"
    )
    return [Problem(_key("externalDsn"), None, reason)]


def _replicas_fit(settings: StackSettings) -> list[Problem]:
    ports = settings.replica_ports
    if settings.ha.enabled or not ports or ports[-1] <= MAX_PORT:  # with ha, _ha_ports_fit checks the nodes'
        return []
    base = settings.replicas.base_port
    origin = f"basePort {base}" if base is not None else f"{_key('postgres.port')} + 1 = {ports[0]}"
    reason = (
        f"replica {len(ports) - 1} would listen on port {ports[-1]} ({origin}, plus the replica's index), "
        f"above {MAX_PORT}; lower {_key('replicas.basePort')} or the count"
    )
    return [Problem(_key("replicas.count"), show_value(settings.replicas.count), reason)]


def _ports_distinct(settings: StackSettings) -> list[Problem]:
    first_key_of: dict[int, str] = {}
    problems = []
    for key, port in settings.all_ports.items():
        if port in first_key_of:
            reason = (
                f"port {port} is also {first_key_of[port]}; every server of the stack needs its own port: "
                "change one of them"
            )
            problems.append(Problem(key, show_value(port), reason))
        else:
            first_key_of[port] = key
    return problems


def _pool_fits_postgres(settings: StackSettings) -> list[Problem]:
    limit = settings.postgres.max_connections
    bouncer = settings.pgbouncer
    problems = []
    pool = bouncer.default_pool_size + bouncer.reserve_pool_size
    if pool > limit:
        reason = (
            f"defaultPoolSize + reservePoolSize = {pool} is more than {_key('postgres.maxConnections')} = "
            f"{limit}; lower the pool or raise maxConnections"
        )
        problems.append(Problem(_key("pgbouncer.defaultPoolSize"), show_value(bouncer.default_pool_size), reason))
    if bouncer.min_pool_size > bouncer.default_pool_size:
        reason = (
            f"is more than {_key('pgbouncer.defaultPoolSize')} = {bouncer.default_pool_size}: a pool cannot keep "
            "more idle server connections than it may open; lower it"
        )
        problems.append(Problem(_key("pgbouncer.minPoolSize"), show_value(bouncer.min_pool_size), reason))
    if bouncer.max_db_connections > limit:
        reason = (
            f"is more than {_key('postgres.maxConnections')} = {limit}; "
            "lower it (0 means no limit of PgBouncer's own) or raise maxConnections"
        )
        problems.append(Problem(_key("pgbouncer.maxDbConnections"), show_value(bouncer.max_db_connections), reason))
    return problems


def _ha_is_local(settings: StackSettings) -> list[Problem]:
    if not settings.ha.enabled or settings.platform == "local":
        return []
    reason = f'is built on platform local only; set {_key("ha.mode")} to "off" on platform {settings.platform}'
    return [Problem(_key("ha.mode"), show_value(settings.ha.mode), reason)]


def _ha_has_a_standby(settings: StackSettings) -> list[Problem]:
    if not settings.ha.enabled or settings.replicas.count >= 1:
        return []
    reason = f"{_key('ha')} needs a node to fail over to: set {_key('replicas.count')} >= 1"
    return [Problem(_key("replicas.count"), show_value(settings.replicas.count), reason)]


def _ha_timings(settings: StackSettings) -> list[Problem]:
    ha = settings.ha
    if not ha.enabled or ha.loop_wait + 2 * ha.retry_timeout <= ha.ttl:
        return []
    reason = (
        f"loopWait + 2 x retryTimeout = {ha.loop_wait + 2 * ha.retry_timeout} is more than ttl = {ha.ttl}: a "
        "leader could lose its lock while it still retries (Patroni's rule); raise ttl or lower the others"
    )
    return [Problem(_key("ha.ttl"), show_value(ha.ttl), reason)]


def _ha_restores_not_built(settings: StackSettings) -> list[Problem]:
    if not (settings.ha.enabled and settings.backup.enabled and settings.backup.restore_on_provision):
        return []
    reason = (
        f"a Patroni cluster is not re-provisioned from the repository (its nodes archive WAL to it and "
        f"scripts/backup backs up the leader, but a restore is by hand): set it to false with {_key('ha')}"
    )
    return [Problem(_key("backup.restoreOnProvision"), "true", reason)]


def _ha_ports_fit(settings: StackSettings) -> list[Problem]:
    if not settings.ha.enabled:
        return []
    too_high = [
        (key, port) for key, port in settings.all_ports.items() if key.startswith(_key("ha.")) and port > MAX_PORT
    ]
    return [
        Problem(key.split("+", 1)[0], show_value(port), f"gives port {port} ({key}), above {MAX_PORT}; lower it")
        for key, port in too_high[:1]
    ]


_PORT_KEYS = frozenset({"postgres", "replicas", "pgbouncer", "redis", "ha"})

RULES: tuple[Rule, ...] = (
    Rule(frozenset({"allowDataLoss"}), _prod_keeps_data),
    Rule(frozenset({"replicas"}), _prod_has_replicas),
    *(Rule(frozenset({"platform", name}), _secret_required(name)) for name in SERVER_PASSWORD_KEYS),
    *(Rule(frozenset({"platform", name}), _role_password_required(name)) for name in ROLE_PASSWORD_KEYS),
    Rule(frozenset({"platform", "externalDsn"}), _external_dsn_required),
    Rule(frozenset({"postgres", "replicas", "ha"}), _replicas_fit),
    Rule(_PORT_KEYS, _ports_distinct),
    Rule(frozenset({"postgres", "pgbouncer"}), _pool_fits_postgres),
    Rule(frozenset({"platform", "ha"}), _ha_is_local),
    Rule(frozenset({"replicas", "ha"}), _ha_has_a_standby),
    Rule(frozenset({"ha"}), _ha_timings),
    Rule(frozenset({"ha", "backup"}), _ha_restores_not_built),
    Rule(frozenset({"postgres", "replicas", "ha"}), _ha_ports_fit),
    Rule(frozenset({"postgres"}), guc_problems),
)
"""Every cross-key rule, in the order their problems are listed."""
