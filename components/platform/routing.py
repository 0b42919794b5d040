"""Where the application's pools send their server connections: the one routing decision of the stack.

`route` is given what was observed of every server (answering, in recovery, streaming, how far behind)
and says which server takes writes and which take reads. It knows nothing of how servers were started
or how the answer is applied (PgBouncer slots on platform local): an HA manager that promotes a replica
changes what is observed (a new server out of recovery), not this function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

READ_DATABASE_SUFFIX = "_read"


def read_database(database: str) -> str:
    """The pooler's name for the read pool of `database`: the same database, served by replicas."""
    return f"{database}{READ_DATABASE_SUFFIX}"


@dataclass(frozen=True)
class Health:
    """One server as the router saw it at one moment."""

    name: str
    declared_primary: bool
    answering: bool
    in_recovery: bool = False
    streaming: bool = False
    lag_bytes: int | None = None
    """WAL bytes the server has not replayed yet, against the write target; None when unknown."""


@dataclass(frozen=True)
class Routes:
    """The decision: the write target, the read targets, and why each server left out is out."""

    write: str
    read: tuple[str, ...]
    excluded: dict[str, str] = field(default_factory=dict)

    @property
    def read_falls_back(self) -> bool:
        """True when no replica qualifies and reads go to the write target."""
        return self.read == (self.write,)


def write_target(servers: Sequence[Health]) -> str:
    """The server out of recovery, the declared primary first; the declared primary when none answers
    (nothing better exists without failover, and its pool fails loudly instead of writing elsewhere)."""
    writable = [s for s in servers if s.answering and not s.in_recovery]
    writable.sort(key=lambda s: not s.declared_primary)
    if writable:
        return writable[0].name
    return next(s.name for s in servers if s.declared_primary)


def exclusion(server: Health, max_lag_bytes: int) -> str | None:
    """Why a server may not serve reads, or None when it may."""
    if not server.answering:
        return "not answering"
    if not server.in_recovery:
        return "not a replica"
    if not server.streaming:
        return "not streaming from the primary"
    if server.lag_bytes is None:
        return "lag unknown"
    if server.lag_bytes > max_lag_bytes:
        return f"{server.lag_bytes} bytes behind (limit {max_lag_bytes})"
    return None


def route(servers: Sequence[Health], max_lag_bytes: int) -> Routes:
    """Writes to the server out of recovery; reads spread over the replicas that stream within
    `max_lag_bytes`, or to the write target when none does. When the write target itself does not
    answer (no replica can stream then), replicas that answer keep serving reads: stale beats down."""
    write = write_target(servers)
    reasons = {s.name: exclusion(s, max_lag_bytes) for s in servers if s.name != write}
    read = tuple(name for name, reason in reasons.items() if reason is None)
    if not read and not any(s.answering for s in servers if s.name == write):
        read = tuple(s.name for s in servers if s.name != write and s.answering and s.in_recovery)
    excluded = {name: reason for name, reason in reasons.items() if name not in read and reason is not None}
    return Routes(write=write, read=read or (write,), excluded=excluded)
