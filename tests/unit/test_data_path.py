"""The data path's pure parts: the routing decision, PgBouncer's slots, config keys, DSNs, cache keys."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from components.connection import LOOPBACK, ConnectionSpec, Endpoint
from components.outputs import application_dsns, redis_url
from components.platform.local import router as router_module
from components.platform.local import slots
from components.platform.local.router import ReadRouterSpec
from components.platform.routing import Health, Routes, route
from config.settings import CacheSettings
from tests.unit.test_config import Stack
from thorbis_client import CachePolicy, TieredCache

LIMIT = 1000
PRIMARY = Health("primary", True, answering=True, in_recovery=False, lag_bytes=0)


def replica(name: str, **changes: object) -> Health:
    fields: dict[str, object] = {"answering": True, "in_recovery": True, "streaming": True, "lag_bytes": 0}
    fields.update(changes)
    return Health(name, False, **fields)  # type: ignore[arg-type]


# --- routing.route -------------------------------------------------------------------------------------


def test_reads_spread_over_every_streaming_replica_and_writes_go_to_the_primary() -> None:
    routes = route([PRIMARY, replica("replica-0"), replica("replica-1")], LIMIT)
    assert routes == Routes("primary", ("replica-0", "replica-1"), {})
    assert not routes.read_falls_back


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        ({"answering": False, "lag_bytes": None}, "not answering"),
        ({"streaming": False}, "not streaming from the primary"),
        ({"lag_bytes": LIMIT + 1}, f"{LIMIT + 1} bytes behind (limit {LIMIT})"),
        ({"lag_bytes": None}, "lag unknown"),
    ],
)
def test_a_replica_that_cannot_serve_reads_is_left_out_and_says_why(broken: dict[str, object], reason: str) -> None:
    routes = route([PRIMARY, replica("replica-0", **broken), replica("replica-1")], LIMIT)
    assert routes.read == ("replica-1",)
    assert routes.excluded == {"replica-0": reason}


def test_reads_fall_back_to_the_primary_when_no_replica_qualifies() -> None:
    routes = route([PRIMARY, replica("replica-0", answering=False), replica("replica-1", streaming=False)], LIMIT)
    assert routes.read == ("primary",) and routes.read_falls_back


def test_a_promoted_replica_becomes_the_write_target_and_leaves_the_read_pool() -> None:
    """What an HA manager changes is what is observed: the same decision follows it."""
    down = Health("primary", True, answering=False)
    promoted = replica("replica-0", in_recovery=False)
    routes = route([down, promoted, replica("replica-1")], LIMIT)
    assert routes.write == "replica-0" and routes.read == ("replica-1",)


def test_with_the_primary_down_replicas_that_answer_keep_serving_reads() -> None:
    down = Health("primary", True, answering=False)
    routes = route([down, replica("replica-0", streaming=False, lag_bytes=None)], LIMIT)
    assert routes.write == "primary" and routes.read == ("replica-0",)


# --- slots -----------------------------------------------------------------------------------------------


def test_read_slots_are_dealt_round_robin_over_the_read_targets() -> None:
    two = slots.assignment(Routes("primary", ("replica-0", "replica-1")), 2)
    assert two == {"write": "primary", "read-0": "replica-0", "read-1": "replica-1"}
    one = slots.assignment(Routes("primary", ("replica-1",)), 2)
    assert one == {"write": "primary", "read-0": "replica-1", "read-1": "replica-1"}


def test_pgbouncer_databases_name_the_write_pool_the_read_pool_and_the_rest() -> None:
    lines = slots.databases_lines(Path("/s/pgbouncer"), "thorbis", 2)
    assert lines == [
        "thorbis = host=/s/pgbouncer/routes/write port=5432 dbname=thorbis",
        "thorbis_read = host=/s/pgbouncer/routes/read-0,/s/pgbouncer/routes/read-1 port=5432 dbname=thorbis",
        "* = host=/s/pgbouncer/routes/write port=5432",
    ]
    with pytest.raises(ValueError, match="comma or a space"):
        slots.databases_lines(Path("/s/a b"), "thorbis", 1)


def test_a_slot_is_re_pointed_in_place(tmp_path: Path) -> None:
    first = slots.Server("replica-0", 5433, str(tmp_path / "r0"))
    second = slots.Server("replica-1", 5434, str(tmp_path / "r1"))
    assert slots.point(tmp_path, "read-0", first)
    assert not slots.point(tmp_path, "read-0", first)
    assert slots.point(tmp_path, "read-0", second)
    servers = {s.name: s for s in (first, second)}
    assert slots.current(tmp_path, servers, ["read-0", "read-1"]) == {"read-0": "replica-1", "read-1": None}


# --- config ------------------------------------------------------------------------------------------------


def problems(**values: object) -> list[str]:
    return [problem.line("dev") for problem in Stack().with_values(**values).error().problems]


def test_the_default_cache_policy_is_the_reviews_three_tiers() -> None:
    policy = CacheSettings().policy()
    assert policy["familyTtlSeconds"] == {
        "schedules": 300,
        "jobs:status": 300,
        "customers": 3600,
        "price_book": 3600,
        "equipment": 3600,
        "companies": 86400,
        "users:preferences": 86400,
        "settings": 86400,
    }


@pytest.mark.parametrize(
    ("value", "key", "says"),
    [
        ('{"tiers": {"a": {"ttlSeconds": 0, "families": ["x:*"]}}}', "cache.tiers.a.ttlSeconds", "from 1 to 604800"),
        ('{"tiers": {"a": {"ttlSeconds": 5, "families": ["X"]}}}', "cache.tiers.a.families.0", "ending in ':*'"),
        ('{"tiers": {"a": {"ttlSeconds": 5, "families": []}}}', "cache.tiers.a.families", "non-empty list"),
        ('{"tiers": {"a": {"ttl": 5, "families": ["x:*"]}}}', "cache.tiers.a.ttl", "allowed keys under"),
        (
            '{"tiers": {"a": {"ttlSeconds": 5, "families": ["x:*"]}, "b": {"ttlSeconds": 9, "families": ["x:*"]}}}',
            "cache.tiers",
            "family x:* is in tiers a and b",
        ),
        ('{"stampedeLockMs": 5}', "cache.stampedeLockMs", "from 10 to 60000"),
    ],
)
def test_bad_cache_config_names_its_key(value: str, key: str, says: str) -> None:
    lines = problems(cache=json.loads(value))
    assert any(f"thorbis:{key} " in line and says in line for line in lines), lines


def test_min_pool_size_above_the_pool_is_refused_naming_both_keys() -> None:
    lines = problems(pgbouncer={"minPoolSize": 30, "defaultPoolSize": 20})
    assert any("thorbis:pgbouncer.minPoolSize = 30" in line and "defaultPoolSize = 20" in line for line in lines)


# --- outputs ----------------------------------------------------------------------------------------------


def spec(**changes: object) -> ConnectionSpec:
    fields: dict[str, object] = {
        "platform": "local",
        "primary": Endpoint.loopback(5432),
        "database": "thorbis",
        "admin_user": "postgres",
        "admin_password": "x",
        "pooler": Endpoint.loopback(6432),
        "read_database": "thorbis_read",
        "redis": Endpoint.loopback(6379),
        "redis_password": "p@ss:/word",
    }
    fields.update(changes)
    return ConnectionSpec(**fields)  # type: ignore[arg-type]


def test_application_dsns_are_the_poolers_two_pools_as_authenticator() -> None:
    write, read = application_dsns(spec(), "p@ss:/w?rd#")
    pool = {"host": LOOPBACK, "port": "6432", "user": "authenticator", "password": "p@ss:/w?rd#"}
    assert conninfo_to_dict(write).items() >= {**pool, "dbname": "thorbis"}.items()
    assert conninfo_to_dict(read).items() >= {**pool, "dbname": "thorbis_read"}.items()
    assert redis_url(spec()) == f"redis://:p%40ss%3A%2Fword@{LOOPBACK}:6379/0"


def test_without_a_pooler_both_dsns_are_the_server_itself() -> None:
    write, read = application_dsns(spec(pooler=None, read_database=None, sslmode="require"), "pw")
    assert write == read
    server = {"host": LOOPBACK, "port": "5432", "dbname": "thorbis", "user": "authenticator", "sslmode": "require"}
    assert conninfo_to_dict(write).items() >= server.items()


# --- cache keys ---------------------------------------------------------------------------------------------


def test_cache_keys_start_with_the_canonical_company_and_a_declared_family() -> None:
    cache = TieredCache(None, CachePolicy.from_output(CacheSettings().policy()))
    company = uuid.uuid4()
    assert cache.key(str(company).upper(), "jobs:status", "7") == f"thorbis:{company}:jobs:status|7"
    for forged in (f"{company}:x", f"{company}|x", "", "thorbis"):
        with pytest.raises(ValueError):
            cache.key(forged, "customers", "1")
    with pytest.raises(ValueError, match="not in thorbis:cache tiers"):
        cache.key(company, "jobs", "status|7")


# --- the router's moves ---------------------------------------------------------------------------------


def router(tmp_path: Path) -> ReadRouterSpec:
    servers = [
        {"name": name, "port": port, "socketDir": str(tmp_path / name), "primary": name == "primary"}
        for name, port in (("primary", 5432), ("replica-0", 5433), ("replica-1", 5434))
    ]
    return ReadRouterSpec.model_validate(
        {
            "stateDir": str(tmp_path / "router"),
            "pgbouncerDir": str(tmp_path / "pgbouncer"),
            "pgbouncerPort": 6432,
            "database": "thorbis",
            "authPassword": "x",
            "servers": servers,
            "readSlots": 2,
            "maxLagBytes": LIMIT,
            "intervalMs": 100,
        }
    )


@pytest.mark.parametrize(
    ("replica_0", "reconnected"),
    [(replica("replica-0", lag_bytes=LIMIT + 1), {"thorbis_read"}), (replica("replica-0", answering=False), set())],
)
def test_pools_reconnect_only_when_a_server_they_left_still_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replica_0: Health, reconnected: set[str]
) -> None:
    """A lagging replica still holds server connections: they must go. A stopped one holds none."""
    spec = router(tmp_path)
    calls: list[set[str]] = []
    monkeypatch.setattr(router_module, "reconnect", lambda spec, pools: calls.append(pools))
    everyone = [PRIMARY, replica("replica-0"), replica("replica-1")]
    router_module.apply(spec, route(everyone, LIMIT), everyone)
    calls.clear()
    health = [PRIMARY, replica_0, replica("replica-1")]
    moved = router_module.apply(spec, route(health, LIMIT), health)
    assert moved == ["read-0"]
    assert calls == ([reconnected] if reconnected else [])
