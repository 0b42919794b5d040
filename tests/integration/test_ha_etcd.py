"""Taking an etcd member out, with three real etcd members (no Patroni): a removal the cluster refuses stops
nothing, and a cluster that is going whole (a destroy deletes its members side by side) lets them all go."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from components.kind import ProviderError
from components.platform.local import process
from components.platform.local.ha import etcd
from testbed.support import free_port, reachable_state_dir

MEMBERS = 3


@pytest.fixture
def members() -> Iterator[list[etcd.EtcdMemberSpec]]:
    """Three members of one cluster, started side by side (each waits for a quorum); stopped after the test."""
    with reachable_state_dir() as directory:
        ports = [(free_port(), free_port()) for _ in range(MEMBERS)]
        peers = [etcd.Peer(name=f"etcd-{j}", client_port=c, peer_port=p) for j, (c, p) in enumerate(ports)]
        specs = [
            etcd.EtcdMemberSpec(
                state_dir=str(directory / peer.name),
                name=peer.name,
                client_port=peer.client_port,
                peer_port=peer.peer_port,
                cluster_token="thorbis-etcd-test",
                peers=peers,
            )
            for peer in peers
        ]
        kind = etcd.EtcdMemberKind()
        with ThreadPoolExecutor(MEMBERS) as pool:
            list(pool.map(kind.create, specs))
        try:
            yield specs
        finally:
            for spec in specs:
                etcd.stop(spec)


def names_listed_by(spec: etcd.EtcdMemberSpec) -> set[str]:
    return {str(member.get("name")) for member in etcd.member_list(spec.client_port)}


def test_a_member_whose_removal_the_cluster_refuses_is_not_stopped(members: list[etcd.EtcdMemberSpec]) -> None:
    """With one member down, taking out a running one would leave one running member of two: etcd refuses
    (strict reconfiguration check). Stopping it anyway would leave the cluster without quorum."""
    leaving, down, staying = members
    etcd.stop(down)
    with pytest.raises(ProviderError, match=r"refused cluster/member/remove"):
        etcd.EtcdMemberKind().delete("id", leaving)
    assert etcd.status(leaving).running and Path(leaving.state_dir, "data").is_dir()
    assert names_listed_by(staying) == {spec.name for spec in members}
    process.wait_until(lambda: etcd.healthy(staying.client_port), 30, "the staying member to have quorum")


def test_a_destroy_deleting_every_member_at_once_succeeds(members: list[etcd.EtcdMemberSpec]) -> None:
    """Members leaving at the same moment refuse each other for a while (a cluster a few seconds old counts no
    peer as connected yet, and a member that was just removed stops answering): each retries, then goes."""
    kind = etcd.EtcdMemberKind()
    with ThreadPoolExecutor(MEMBERS) as pool:
        list(pool.map(lambda spec: kind.delete("id", spec), members))
    assert not any(etcd.status(spec).running or Path(spec.state_dir).exists() for spec in members)


def test_the_last_members_of_a_cluster_going_whole_are_deleted(members: list[etcd.EtcdMemberSpec]) -> None:
    """As in a destroy: once the others are gone there is no quorum to keep, and the member goes."""
    last, *others = members
    for spec in others:
        etcd.stop(spec)
    etcd.EtcdMemberKind().delete("id", last)
    assert not etcd.status(last).running and not Path(last.state_dir).exists()
