"""Changes to a live HA cluster that would lose its data or its quorum are refused before anything changes:
at the provider's check (a node's or an etcd member's replacement, a changed etcd membership) or when the
program starts (switching thorbis:ha.mode beside data the other mode holds). No server is started."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pulumi.provider.experimental.provider import CheckRequest

from components.kind import Kind
from components.platform.local import platform as local
from components.platform.local.ha import etcd, haproxy, node, patroni
from components.provider import ThorbisProvider, property_value
from config import ConfigError
from ops.events import Change
from ops.risk import destructive
from tests.unit.test_config import Stack

NODE = {
    "stateDir": "/srv/stack/ha-node-0",
    "scope": "thorbis-staging",
    "name": "node-0",
    "port": 40010,
    "restPort": 40011,
    "etcdPorts": [40040, 40042, 40044],
    "database": "thorbis",
    "superuserPassword": "s" * 16,
    "replicationPassword": "r" * 16,
    "allowDataLoss": False,
    "backup": None,
}


def peers(count: int, base: int = 40040) -> list[dict[str, Any]]:
    return [{"name": f"etcd-{j}", "clientPort": base + 2 * j, "peerPort": base + 2 * j + 1} for j in range(count)]


def member(count: int = 3, base: int = 40040, **changes: Any) -> dict[str, Any]:
    return {
        "stateDir": "/srv/stack/etcd-0",
        "name": "etcd-0",
        "clientPort": base,
        "peerPort": base + 1,
        "clusterToken": "thorbis-staging",
        "peers": peers(count, base),
        "allowDataLoss": False,
        **changes,
    }


def check(kind: Kind[Any, Any], old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The reasons the provider's check gives for refusing `new` over `old` (none: accepted)."""
    provider = ThorbisProvider({kind.token: kind})
    wire = {key: property_value(value) for key, value in new.items()}
    olds = {key: property_value(value) for key, value in old.items()}
    urn = f"urn:pulumi:staging::thorbis-db::thorbis:platform:Local${kind.token}::thorbis-x"
    answer = asyncio.run(provider.check(CheckRequest(urn, olds, wire, b"")))
    return [failure.reason for failure in answer.failures or []]


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"port": 40020, "restPort": 40021}, ["port 40010 -> 40020", "restPort 40011 -> 40021"]),
        ({"stateDir": "/srv/other/ha-node-0"}, ["stateDir /srv/stack/ha-node-0 -> /srv/other/ha-node-0"]),
        ({"scope": "thorbis-other"}, ["scope thorbis-staging -> thorbis-other"]),
    ],
)
def test_replacing_a_patroni_node_is_refused_naming_what_changed_and_what_would_be_lost(
    changes: dict[str, Any], named: list[str]
) -> None:
    [reason] = check(node.PatroniNodeKind(), NODE, {**NODE, **changes})
    assert "Patroni node node-0 would be replaced" in reason
    assert all(change in reason for change in named), reason
    assert "new, empty cluster" in reason and "thorbis:postgres.port" in reason
    assert "thorbis:allowDataLoss" in reason


def test_a_node_replacement_goes_ahead_when_the_stack_allows_data_loss_and_other_changes_are_in_place() -> None:
    assert check(node.PatroniNodeKind(), NODE, {**NODE, "port": 40020, "allowDataLoss": True}) == []
    assert check(node.PatroniNodeKind(), NODE, {**NODE, "etcdPorts": [40040]}) == []
    assert check(node.PatroniNodeKind(), {}, {**NODE, "port": 40020}) == []  # a new node: nothing to lose


def test_replacing_an_etcd_member_is_refused_naming_its_ports_and_its_data() -> None:
    """A new etcd base port (thorbis:postgres.port moved it) replaces every member with a new, empty one."""
    [reason] = check(etcd.EtcdMemberKind(), member(), member(base=40140))
    assert "etcd member etcd-0 would be replaced" in reason
    assert "clientPort 40040 -> 40140" in reason and "peerPort 40041 -> 40141" in reason
    assert "leader lock" in reason and "empty etcd" in reason and "thorbis:allowDataLoss" in reason
    assert check(etcd.EtcdMemberKind(), member(), member(base=40140, allowDataLoss=True)) == []


@pytest.mark.parametrize(("before", "after"), [(3, 5), (3, 1), (1, 3)])
def test_changing_the_members_of_a_running_etcd_cluster_is_refused_even_when_data_loss_is_allowed(
    before: int, after: int
) -> None:
    for allow in (False, True):
        [reason] = check(etcd.EtcdMemberKind(), member(before), member(after, allowDataLoss=allow))
        assert "thorbis:ha.etcdMembers" in reason, reason
        assert "not built" in reason and f"back to {before}" in reason
        assert "thorbis:allowDataLoss" not in reason  # allowing data loss does not make it possible


def test_the_same_members_in_another_order_and_a_first_create_are_no_change() -> None:
    assert check(etcd.EtcdMemberKind(), member(), member(peers=peers(3)[::-1])) == []
    assert check(etcd.EtcdMemberKind(), {}, member(5)) == []


def test_the_pr_preview_names_what_deleting_a_node_or_an_etcd_member_loses() -> None:
    changes = [
        Change("replace", f"urn:pulumi:s::p::{kind.TOKEN}::thorbis-{name}", kind.TOKEN)
        for kind, name in ((node, "node-1"), (etcd, "etcd-2"))
    ]
    found = destructive(changes, [])
    assert any("Patroni node thorbis-node-1" in loss for loss in found), found
    assert any("etcd member thorbis-etcd-2" in loss and "leader lock" in loss for loss in found), found


# --- switching thorbis:ha.mode beside data ---------------------------------------------------------------


def whole_cluster(base: Path) -> None:
    """A data directory as initdb leaves it (PG_VERSION and pg_control)."""
    (base / "data" / "global").mkdir(parents=True)
    (base / "data" / "PG_VERSION").write_text("15\n")
    (base / "data" / "global" / "pg_control").write_bytes(b"\0" * 8192)


def stack(state_dir: Path, mode: str) -> Any:
    return (
        Stack()
        .with_values(
            stateDir=str(state_dir),
            replicas={"count": 1},
            ha={"mode": mode},
            backup={"enabled": False},
        )
        .parse()
    )


@pytest.mark.parametrize(
    ("held_by", "mode", "named"),
    [
        ("postgres-primary", "patroni", "a primary and replicas without Patroni"),
        ("ha-node-0", "off", "Patroni nodes"),
    ],
)
def test_switching_ha_mode_beside_the_other_modes_data_is_refused_naming_the_key(
    tmp_path: Path, held_by: str, mode: str, named: str
) -> None:
    whole_cluster(tmp_path / held_by)
    with pytest.raises(ConfigError) as caught:
        local.check_mode_switch(stack(tmp_path, mode))
    [problem] = caught.value.problems
    assert problem.key == "thorbis:ha.mode" and problem.value == f'"{mode}"'
    assert named in problem.reason and str(tmp_path / held_by / "data") in problem.reason
    assert "backup" in problem.reason and "not built" in problem.reason


def test_a_stack_keeping_its_mode_or_starting_empty_passes(tmp_path: Path) -> None:
    whole_cluster(tmp_path / "ha-node-0")
    (tmp_path / "postgres-primary" / "data").mkdir(parents=True)  # an interrupted initdb: no cluster in it
    local.check_mode_switch(stack(tmp_path, "patroni"))
    whole_cluster(tmp_path / "other" / "postgres-primary")
    local.check_mode_switch(stack(tmp_path / "other", "off"))


# --- HAProxy's sessions ----------------------------------------------------------------------------------


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", value).groups()  # type: ignore[union-attr]
    return int(number) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1e-3}[unit]


def test_haproxy_never_cuts_a_long_silent_statement_but_connects_and_checks_fast(tmp_path: Path) -> None:
    members = [patroni.Member(name=f"node-{i}", port=30000 + 2 * i, rest_port=30001 + 2 * i) for i in range(2)]
    spec = haproxy.HaRouterSpec(state_dir=str(tmp_path), write_port=32000, read_port=32001, members=members)
    text = haproxy.config_text(spec)
    timeouts = dict(re.findall(r"^\s+timeout (\w+) (\S+)$", text, re.MULTILINE))
    assert seconds(timeouts["client"]) >= 24 * 3600 and seconds(timeouts["server"]) >= 24 * 3600
    assert seconds(timeouts["connect"]) <= 5 and seconds(timeouts["check"]) <= 5
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    checked = subprocess.run([haproxy.haproxy(), "-c", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "timeout" not in checked.stdout + checked.stderr  # HAProxy takes the values as they are
