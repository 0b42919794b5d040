"""PgBouncer's server targets on platform local: fixed slots, each a symlink to one server's Unix socket.

PgBouncer 1.18 takes a list of hosts for a database but one port for all of them, and our servers share
127.0.0.1 on different ports. A slot is a directory under PgBouncer's own holding
`.s.PGSQL.<SLOT_PORT>`, a symlink to a server's real socket, so `host=<slot>,<slot> port=SLOT_PORT` is a
host list PgBouncer round-robins over. The host list never changes: the router re-points the links
(atomically), so PgBouncer keeps its healthy server connections and opens new ones where the links say.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from components.platform.routing import Routes, read_database

SLOT_PORT = 5432
"""The port in every slot's socket name; it names a file, nothing listens on it."""
WRITE_SLOT = "write"


@dataclass(frozen=True)
class Server:
    """A server PgBouncer can be pointed at: its name for the router, port and socket directory."""

    name: str
    port: int
    socket_dir: str
    primary: bool = False

    @property
    def socket(self) -> Path:
        return Path(self.socket_dir) / f".s.PGSQL.{self.port}"


def read_slots(count: int) -> list[str]:
    return [f"read-{index}" for index in range(max(1, count))]


def slot_dir(pgbouncer_dir: Path, slot: str) -> Path:
    return pgbouncer_dir / "routes" / slot


def slot_link(pgbouncer_dir: Path, slot: str) -> Path:
    return slot_dir(pgbouncer_dir, slot) / f".s.PGSQL.{SLOT_PORT}"


def host_list(pgbouncer_dir: Path, slots: list[str]) -> str:
    hosts = [str(slot_dir(pgbouncer_dir, slot)) for slot in slots]
    for host in hosts:
        if "," in host or any(c.isspace() for c in host):
            raise ValueError(f"{host}: a PgBouncer host list cannot hold a path with a comma or a space")
    return ",".join(hosts)


def databases_lines(pgbouncer_dir: Path, database: str, read_slot_count: int) -> list[str]:
    """The [databases] section: the database's write pool, its read pool, and any other database
    (tools' `postgres`) to the write target."""
    write = f"host={host_list(pgbouncer_dir, [WRITE_SLOT])} port={SLOT_PORT}"
    read = f"host={host_list(pgbouncer_dir, read_slots(read_slot_count))} port={SLOT_PORT}"
    return [
        f"{database} = {write} dbname={database}",
        f"{read_database(database)} = {read} dbname={database}",
        f"* = {write}",
    ]


def assignment(routes: Routes, read_slot_count: int) -> dict[str, str]:
    """Slot to server name: the write slot to the write target, read slots round-robin over the
    read targets (two replicas and two slots: one each; one left: both slots to it)."""
    slots = {WRITE_SLOT: routes.write}
    for index, slot in enumerate(read_slots(read_slot_count)):
        slots[slot] = routes.read[index % len(routes.read)]
    return slots


def point(pgbouncer_dir: Path, slot: str, server: Server) -> bool:
    """Point a slot at a server's socket (a rename over the old link: never a moment without one);
    return whether it changed."""
    link = slot_link(pgbouncer_dir, slot)
    if link.is_symlink() and os.readlink(link) == str(server.socket):
        return False
    link.parent.mkdir(parents=True, exist_ok=True)
    temporary = link.with_name(f".{link.name}.new")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(server.socket)
    temporary.replace(link)
    return True


def current(pgbouncer_dir: Path, servers: Mapping[str, Server], slots: list[str]) -> dict[str, str | None]:
    """Slot to the name of the server its link points at (None: missing, or no server of ours)."""
    by_socket = {str(server.socket): name for name, server in servers.items()}
    found: dict[str, str | None] = {}
    for slot in slots:
        link = slot_link(pgbouncer_dir, slot)
        found[slot] = by_socket.get(os.readlink(link)) if link.is_symlink() else None
    return found


def all_slots(read_slot_count: int) -> list[str]:
    return [WRITE_SLOT, *read_slots(read_slot_count)]
