"""thorbisdb:local:PatroniCluster — what the nodes of one Patroni cluster share: Patroni's dynamic
configuration in etcd (timings, synchronous mode, pg_rewind, postgresql.conf settings).

It is written into etcd before the first node starts, so the cluster is bootstrapped with it. Later it
is changed through a member's REST API (`PUT /config`); a setting that takes a restart is then rolled
through the nodes one at a time, replicas first and the leader last. The cluster declares no leader:
whichever node holds the lock is the one restarted last.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import psycopg
from pydantic import Field

from components.kind import Expect, Kind, Observed, ProviderError, Replace, Secret, Spec, Status, Unreachable
from components.platform.local import postgres_files as pg
from components.platform.local import process
from components.platform.local.ha import etcd, http, patroni
from components.platform.local.ha.patroni import Member

TOKEN = "thorbisdb:local:PatroniCluster"
#: A replica further behind than this (bytes of WAL) is never promoted (asynchronous mode only).
MAXIMUM_LAG_ON_FAILOVER = 1024 * 1024
#: Time a restarted node may take to come back before the rolling restart stops with an error.
RESTART_TIMEOUT_SECONDS = 300
#: Rounds of restarts before a node still waiting for one is an error. A second round is needed when a
#: replica restarted before the leader had to keep the leader's higher value of a setting such as
#: max_connections (Patroni starts it with the value from pg_controldata) and waits again.
RESTART_ROUNDS = 3


class PatroniClusterSpec(Spec):
    scope: Replace[str] = Field(pattern=r"^[a-z0-9-]{1,63}$", description="The cluster's name in etcd.")
    etcd_ports: list[int] = Field(min_length=1, description="Client ports of the etcd members.")
    members: list[Member] = Field(min_length=1, description="The nodes, for the REST API and restarts.")
    superuser_password: Secret[str] = Field(min_length=1, description="Password of `postgres` and the REST API.")
    synchronous: bool = Field(description="Synchronous mode: a commit is acknowledged once a standby has it.")
    ttl: int = Field(ge=20, description="Seconds a leader lock lives without renewal.")
    loop_wait: int = Field(ge=1, description="Seconds between two runs of each node's Patroni loop.")
    retry_timeout: int = Field(ge=3, description="Seconds etcd and PostgreSQL calls are retried.")
    settings: dict[str, str] = Field(default_factory=dict, description="postgresql.conf of every member.")


class PatroniClusterStatus(Status):
    restarted: list[str] | None = Field(
        default=None, description="The nodes the last change restarted, in their order (the leader last)."
    )
    waiting_for_restart: Annotated[list[str] | None, Expect([])] = Field(
        default=None,
        description="Nodes running with a setting of the configuration they take only at a restart (a change "
        "whose rolling restart was interrupted, or a node that was down): `up` rolls the restart.",
    )


def config_key(scope: str) -> str:
    return f"{patroni.NAMESPACE}{scope}/config"


def dynamic_configuration(spec: PatroniClusterSpec) -> dict[str, Any]:
    return {
        "ttl": spec.ttl,
        "loop_wait": spec.loop_wait,
        "retry_timeout": spec.retry_timeout,
        "maximum_lag_on_failover": MAXIMUM_LAG_ON_FAILOVER,
        "synchronous_mode": spec.synchronous,
        "synchronous_mode_strict": False,
        # A crashed primary: in synchronous mode its standby holds every acknowledged commit, so it is
        # promoted at once; otherwise the primary is restarted in place (crash recovery loses nothing).
        "primary_start_timeout": 0 if spec.synchronous else 300,
        "postgresql": {"use_pg_rewind": True, "use_slots": True, "parameters": dict(spec.settings)},
    }


def as_inputs(document: dict[str, Any], spec: PatroniClusterSpec) -> dict[str, Any]:
    """A dynamic configuration read back, in the spec's shape (what `refresh` compares): the settings we
    manage only, as the non-HA server reports them (Patroni adds its defaults of others when it bootstraps)."""
    parameters = (document.get("postgresql") or {}).get("parameters") or {}
    return {
        "synchronous": bool(document.get("synchronous_mode", False)),
        "ttl": document.get("ttl"),
        "loopWait": document.get("loop_wait"),
        "retryTimeout": document.get("retry_timeout"),
        "settings": {name: str(parameters[name]) for name in spec.settings if name in parameters},
    }


def healthy_etcd(spec: PatroniClusterSpec) -> int:
    port = next((p for p in spec.etcd_ports if etcd.healthy(p)), None)
    if port is None:
        raise Unreachable(f"no etcd member of {spec.scope} answers with quorum (client ports {spec.etcd_ports})")
    return port


def stored_configuration(spec: PatroniClusterSpec) -> dict[str, Any] | None:
    raw = etcd.get(healthy_etcd(spec), config_key(spec.scope))
    return json.loads(raw) if raw else None


def answering_members(spec: PatroniClusterSpec) -> list[Member]:
    return [member for member in spec.members if patroni.running(member.rest_port)]


def authenticated_call(
    member: Member, path: str, method: str, body: Any, timeout: float, passwords: list[str]
) -> tuple[int, Any]:
    """One request to the member's REST API, with the first of `passwords` it does not refuse (401)."""
    for password in passwords:
        code, answer = http.call(
            member.rest_port, path, method, body, timeout=timeout, auth=(patroni.REST_USER, password)
        )
        if code != 401:
            break
    return code, answer


def write_configuration(spec: PatroniClusterSpec, passwords: list[str]) -> None:
    """Through a running member (Patroni applies it to every node), else straight into etcd. `passwords`:
    the declared superuser password first, then the one before a rotation (the nodes, updated after the
    cluster, still have it)."""
    document = dynamic_configuration(spec)
    for member in answering_members(spec):
        code, body = authenticated_call(member, "/config", "PUT", document, 10, passwords)
        if code == 200:
            return
        raise ProviderError(f"Patroni on {member.name} refused the configuration: {code} {body}")
    etcd.put(healthy_etcd(spec), config_key(spec.scope), json.dumps(document, separators=(",", ":")))


def connected(member: Member, passwords: list[str]) -> psycopg.Connection:
    """A superuser session on the member with the first of `passwords` it takes."""
    for password in passwords[:-1]:
        try:
            return pg.connect(member.port, password)
        except ProviderError:
            continue
    return pg.connect(member.port, passwords[-1])


def settings_applied(member: Member, spec: PatroniClusterSpec, passwords: list[str]) -> tuple[bool, bool]:
    """Whether the member's PostgreSQL has taken every setting (live, or pending a restart), and whether
    it waits for a restart. Patroni writes every setting into postgresql.conf, those it also passes on the
    command line (max_connections and the like) included, so a new value of either is `pending_restart`
    once Patroni has reloaded."""
    with connected(member, passwords) as conn:
        live = pg.live_settings(conn, spec.settings)
        pending = {row[0] for row in conn.execute("SELECT name FROM pg_settings WHERE pending_restart")}
    taken = all(live[name] == value or name in pending for name, value in spec.settings.items())
    return taken, bool(pending)


def waiting_for_restart(spec: PatroniClusterSpec) -> list[str]:
    """The answering members that wait for a restart now (one look, no wait)."""
    waiting = []
    for member in answering_members(spec):
        try:
            if settings_applied(member, spec, [spec.superuser_password])[1]:
                waiting.append(member.name)
        except (ProviderError, psycopg.Error):
            continue  # restarting or unreachable now: its Patroni, not this read, decides
    return waiting


def wait_applied(member: Member, spec: PatroniClusterSpec, passwords: list[str]) -> bool:
    """Wait until Patroni's loop on the member has written and reloaded the configuration; return
    whether the member needs a restart."""
    found: dict[str, bool] = {}

    def taken() -> bool:
        try:
            found["taken"], found["restart"] = settings_applied(member, spec, passwords)
        except (ProviderError, psycopg.Error):
            return False
        return found["taken"]

    process.wait_until(taken, 3 * spec.loop_wait + 30, f"node {member.name} to take the new configuration")
    return found["restart"]


def restart(member: Member, spec: PatroniClusterSpec, passwords: list[str]) -> None:
    code, body = authenticated_call(member, "/restart", "POST", {}, RESTART_TIMEOUT_SECONDS, passwords)
    if code != 200:
        raise ProviderError(f"Patroni could not restart {member.name}: {code} {body}")
    process.wait_until(
        lambda: patroni.running(member.rest_port), RESTART_TIMEOUT_SECONDS, f"node {member.name} to run again"
    )


def rolling_restart(spec: PatroniClusterSpec, passwords: list[str]) -> list[str]:
    """Restart the members that wait for one, one at a time, the leader last, until none waits; return
    their names in the order they were restarted."""
    restarted: list[str] = []
    for round_ in range(RESTART_ROUNDS + 1):
        members = answering_members(spec)
        pending = [member for member in members if wait_applied(member, spec, passwords)]
        if not pending:
            return restarted
        if round_ == RESTART_ROUNDS:
            raise ProviderError(
                f"after {RESTART_ROUNDS} rounds of restarts, {', '.join(m.name for m in pending)} still run "
                "without the declared settings: see each node's patroni.log"
            )
        leader = patroni.leader_of(patroni.cluster_status([m.rest_port for m in members]))
        leader_name = leader.get("name") if leader else None
        for member in sorted(pending, key=lambda member: member.name == leader_name):
            restart(member, spec, passwords)
            restarted.append(member.name)
    return restarted


class PatroniClusterKind(Kind[PatroniClusterSpec, PatroniClusterStatus]):
    token = TOKEN
    spec_type = PatroniClusterSpec
    status_type = PatroniClusterStatus

    def create(self, spec: PatroniClusterSpec) -> tuple[str, PatroniClusterStatus]:
        stored = stored_configuration(spec)  # an existing cluster of the same name is adopted
        wanted = dynamic_configuration(spec)
        if stored is None or as_inputs(stored, spec) != as_inputs(wanted, spec):
            write_configuration(spec, [spec.superuser_password])
        restarted = rolling_restart(spec, [spec.superuser_password])
        return spec.scope, PatroniClusterStatus(restarted=restarted, waiting_for_restart=[])

    def observe(
        self, resource_id: str, spec: PatroniClusterSpec, recorded: PatroniClusterStatus | None = None
    ) -> Observed[PatroniClusterStatus] | None:
        stored = stored_configuration(spec)
        if stored is None:
            return None
        return Observed(as_inputs(stored, spec), PatroniClusterStatus(waiting_for_restart=waiting_for_restart(spec)))

    def update(self, resource_id: str, old: dict[str, Any], spec: PatroniClusterSpec) -> PatroniClusterStatus:
        passwords = [
            password for password in dict.fromkeys([spec.superuser_password, old.get("superuserPassword")]) if password
        ]
        write_configuration(spec, passwords)  # the whole document: a setting no longer declared goes too
        return PatroniClusterStatus(restarted=rolling_restart(spec, passwords), waiting_for_restart=[])

    def delete(self, resource_id: str, spec: PatroniClusterSpec, recorded: PatroniClusterStatus | None = None) -> None:
        try:
            port = healthy_etcd(spec)
        except Unreachable:
            return  # etcd is gone with the stack: so is the configuration
        etcd.delete_prefix(port, f"{patroni.NAMESPACE}{spec.scope}/")
