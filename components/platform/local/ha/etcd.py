"""thorbisdb:local:EtcdMember — one member of the etcd cluster Patroni keeps its leader lock in.

Members are started as they are declared (`--initial-cluster-state new`, all at once by the first `up`).
Changing the members of a running cluster (thorbis:ha.etcdMembers) is refused at check: every member was
started with `--initial-cluster` naming the members declared then, and growing or shrinking that safely
(one `member add` or `member remove` at a time, each member started with the list of its moment) is not
built. A member that is deleted is taken out (`member remove`) before it stops, so quorum is counted on the
right members.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from components.kind import Expect, Kind, Observed, ProviderError, Replace, Spec, Status
from components.platform.local import process
from components.platform.local.ha import http

TOKEN = "thorbisdb:local:EtcdMember"
#: How long a member being deleted retries leaving a cluster that refuses it before it gives up.
LEAVE_TIMEOUT_SECONDS = 10


class Peer(Spec):
    """A member of the cluster as every member's command line names it."""

    name: str
    client_port: int
    peer_port: int


class EtcdMemberSpec(Spec):
    state_dir: Replace[str] = Field(description="Directory of this member: data/, etcd.log and etcd.pid.")
    name: Replace[str] = Field(pattern=r"^[a-z0-9-]{1,63}$", description="The member's name in the cluster.")
    client_port: Replace[int] = Field(ge=1024, le=65535, description="Port of the client API on 127.0.0.1.")
    peer_port: Replace[int] = Field(ge=1024, le=65535, description="Port of the peer (raft) traffic on 127.0.0.1.")
    cluster_token: Replace[str] = Field(min_length=1, description="Token of the cluster, so two never mix.")
    peers: list[Peer] = Field(min_length=1, description="Every member of the cluster, this one included.")
    allow_data_loss: bool = Field(default=False, description="Whether a replace may delete the member's data.")


class EtcdMemberStatus(Status):
    running: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="The member's process runs (false: `up` starts it)."
    )
    healthy: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="It answers /health as part of a cluster with quorum."
    )


def url(port: int) -> str:
    return f"http://{http.HOST}:{port}"


def files(spec: EtcdMemberSpec) -> tuple[Path, Path, Path]:
    base = Path(spec.state_dir)
    return base / "data", base / "etcd.log", base / "etcd.pid"


def args_file(spec: EtcdMemberSpec) -> Path:
    """The command line the member was started with (which ports a running stack holds)."""
    return Path(spec.state_dir) / "etcd.args"


def command(spec: EtcdMemberSpec, state: str) -> list[str]:
    data, _, _ = files(spec)
    cluster = ",".join(f"{peer.name}={url(peer.peer_port)}" for peer in spec.peers)
    return [
        "etcd",
        f"--name={spec.name}",
        f"--data-dir={data}",
        f"--listen-client-urls={url(spec.client_port)}",
        f"--advertise-client-urls={url(spec.client_port)}",
        f"--listen-peer-urls={url(spec.peer_port)}",
        f"--initial-advertise-peer-urls={url(spec.peer_port)}",
        f"--initial-cluster={cluster}",
        f"--initial-cluster-state={state}",
        f"--initial-cluster-token={spec.cluster_token}",
        "--logger=zap",
        "--log-level=warn",
    ]


def healthy(client_port: int) -> bool:
    """The member answers and is part of a cluster with quorum (etcd's /health)."""
    try:
        status, body = http.call(client_port, "/health", timeout=2)
    except ProviderError:
        return False
    return status == 200 and isinstance(body, dict) and body.get("health") == "true"


def v3(client_port: int, path: str, body: dict[str, Any]) -> Any:
    """The answer of one call of the v3 gateway; a refusal (any status but 200) is raised, never ignored."""
    code, answer = http.call(client_port, f"/v3/{path}", "POST", body)
    if code != 200:
        raise ProviderError(f"etcd on port {client_port} refused {path} {body}: {code} {answer}")
    return answer


def member_list(client_port: int) -> list[dict[str, Any]]:
    return list((v3(client_port, "cluster/member/list", {}) or {}).get("members", []))


def running_peer(spec: EtcdMemberSpec) -> int | None:
    """The client port of another member that is healthy now, if any."""
    return next((p.client_port for p in spec.peers if p.name != spec.name and healthy(p.client_port)), None)


def join_state(spec: EtcdMemberSpec) -> str:
    """`existing` when the cluster already runs without this member: announce it first; `new` otherwise."""
    data, _, _ = files(spec)
    peer = running_peer(spec)
    if (data / "member").exists() or peer is None:
        return "new"  # a member with data ignores the flag; a cluster of none is being born
    if not any(
        member.get("name") == spec.name or url(spec.peer_port) in member.get("peerURLs", [])
        for member in member_list(peer)
    ):
        v3(peer, "cluster/member/add", {"peerURLs": [url(spec.peer_port)]})
    return "existing"


def start(spec: EtcdMemberSpec, timeout: float = 60) -> None:
    _, log, pidfile = files(spec)
    if process.read_pid(pidfile) is None:
        process.make_private_dir(Path(spec.state_dir))
        argv = command(spec, join_state(spec))
        process.write_private_file(args_file(spec), "\n".join(argv) + "\n")
        pid = process.spawn(argv, log, Path(spec.state_dir))
        process.write_private_file(pidfile, f"{pid}\n")
    # healthy only once a quorum of members runs: the first `up` starts them side by side
    try:
        process.wait_until(lambda: healthy(spec.client_port), timeout, f"etcd member {spec.name} to join a quorum")
    except ProviderError as error:
        raise ProviderError(f"{error}; the end of {log}: {process.last_lines(log)}") from error


def stop(spec: EtcdMemberSpec) -> None:
    _, _, pidfile = files(spec)
    if (pid := process.read_pid(pidfile)) is not None:
        process.terminate(pid, f"etcd member {spec.name}")


def counted_by_a_running_peer(spec: EtcdMemberSpec) -> bool:
    """Another member is healthy (the cluster has quorum) and still counts this one (true when unsure)."""
    try:
        peer = running_peer(spec)
        return peer is not None and any(member.get("name") == spec.name for member in member_list(peer))
    except ProviderError:
        return True


def leave(spec: EtcdMemberSpec) -> None:
    """Take this member out of the cluster's membership while the others still have quorum (etcd refuses,
    and this raises, when removing it would leave too few members running)."""
    peer = running_peer(spec)
    if peer is None:
        return
    for member in member_list(peer):
        if member.get("name") == spec.name:
            v3(peer, "cluster/member/remove", {"ID": member["ID"]})


def leave_before_stopping(spec: EtcdMemberSpec) -> None:
    """Leave the cluster, or raise while a cluster with quorum still counts this member (stopping it would
    take a vote the cluster counts on). Members deleted side by side (a destroy) can refuse each other for a
    moment, so a refusal is tried again for a while; once no other member runs there is no quorum to keep."""
    deadline = time.monotonic() + LEAVE_TIMEOUT_SECONDS
    while True:
        try:
            leave(spec)
            return
        except ProviderError as error:
            refused = error
        if not counted_by_a_running_peer(spec):
            return
        if time.monotonic() > deadline:
            raise ProviderError(
                f"{refused}; etcd member {spec.name} is left running: bring the members that are down back "
                "(`pulumi up --refresh`) and try again"
            )
        time.sleep(1)


def status(spec: EtcdMemberSpec) -> EtcdMemberStatus:
    _, _, pidfile = files(spec)
    running = process.read_pid(pidfile) is not None
    return EtcdMemberStatus(running=running, healthy=running and healthy(spec.client_port))


def encoded(text: str) -> str:
    """Keys and values travel base64-encoded through the v3 gateway."""
    return base64.b64encode(text.encode()).decode()


def kv(client_port: int, action: str, body: dict[str, str]) -> Any:
    return v3(client_port, f"kv/{action}", body)


def put(client_port: int, key: str, value: str) -> None:
    kv(client_port, "put", {"key": encoded(key), "value": encoded(value)})


def delete(client_port: int, key: str) -> None:
    kv(client_port, "deleterange", {"key": encoded(key)})


def delete_prefix(client_port: int, prefix: str) -> None:
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # the range of every key that starts with the prefix
    kv(client_port, "deleterange", {"key": encoded(prefix), "range_end": encoded(end)})


def get(client_port: int, key: str) -> str | None:
    body = kv(client_port, "range", {"key": encoded(key)})
    found = (body or {}).get("kvs") or []
    return base64.b64decode(found[0].get("value", "")).decode() if found else None


def peer_names(peers: list[Any]) -> str:
    return ", ".join(sorted(str(peer.get("name")) for peer in peers))


def peer_set(peers: list[Any]) -> set[tuple[Any, ...]]:
    """Members as their wire form names them, whatever the order."""
    return {(peer.get("name"), peer.get("clientPort"), peer.get("peerPort")) for peer in peers}


class EtcdMemberKind(Kind[EtcdMemberSpec, EtcdMemberStatus]):
    token = TOKEN
    spec_type = EtcdMemberSpec
    status_type = EtcdMemberStatus
    deleting_loses = (
        "the etcd member {name} and its data directory would be deleted (its copy of Patroni's leader lock, "
        "members and dynamic configuration)"
    )
    replacing_loses = (
        "etcd member {name} would be replaced ({changes}): it is deleted first with its data directory (its copy "
        "of Patroni's leader lock, members and dynamic configuration); with every member replaced (as a change "
        "of thorbis:postgres.port or thorbis:ha.etcdBasePort does) the Patroni nodes would meet an empty etcd. "
        "Keep the old value"
    )

    def unsupported(self, old_inputs: dict[str, Any], spec: EtcdMemberSpec) -> list[str]:
        before = old_inputs.get("peers")
        after = [peer.model_dump(by_alias=True) for peer in spec.peers]
        if not isinstance(before, list) or self.replaced_inputs(old_inputs, spec):
            return []  # a member made again starts a new cluster with the others: data_loss says what that loses
        if peer_set(before) == peer_set(after):
            return []
        return [
            f"the members of the running etcd cluster would change from {peer_names(before)} to "
            f"{peer_names(after)} (thorbis:ha.etcdMembers): changing the membership "
            "of a running cluster is not built (each member was started naming the members of its first start, "
            "and etcd would lose quorum). Set thorbis:ha.etcdMembers back to "
            f"{len(before)}"
        ]

    def create(self, spec: EtcdMemberSpec) -> tuple[str, EtcdMemberStatus]:
        start(spec)
        return f"{spec.cluster_token}/{spec.name}", status(spec)

    def observe(
        self, resource_id: str, spec: EtcdMemberSpec, recorded: EtcdMemberStatus | None = None
    ) -> Observed[EtcdMemberStatus] | None:
        data, _, _ = files(spec)
        return Observed({}, status(spec)) if data.exists() else None

    def update(self, resource_id: str, old: dict[str, Any], spec: EtcdMemberSpec) -> EtcdMemberStatus:
        # the member list only matters to a member's first start; a stopped member is started again
        start(spec)
        return status(spec)

    def delete(self, resource_id: str, spec: EtcdMemberSpec, recorded: EtcdMemberStatus | None = None) -> None:
        leave_before_stopping(spec)
        stop(spec)
        process.remove_tree(Path(spec.state_dir))
