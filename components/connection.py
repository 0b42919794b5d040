"""The one typed spec that joins the platform layer (where servers run) and the database layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    """A host and port something listens on."""

    host: str
    port: int


@dataclass(frozen=True)
class ConnectionSpec:
    """How to reach a stack's data platform, whatever platform started it.

    `admin_password` and `redis_password` are secrets: the platform hands this spec over inside a secret
    Output, and it is never exported whole.
    """

    platform: str
    primary: Endpoint
    database: str
    admin_user: str
    admin_password: str = field(repr=False)
    pooler: Endpoint | None = None
    replicas: tuple[Endpoint, ...] = ()
    redis: Endpoint | None = None
    redis_password: str | None = field(default=None, repr=False)
    sslmode: str = "prefer"
    read_database: str | None = None
    """The pooler's database whose server connections go to the replicas (None: reads use `database`)."""

    def admin_conninfo(self, endpoint: Endpoint | None = None, database: str | None = None) -> dict[str, Any]:
        """Keyword arguments for psycopg.connect as the admin user."""
        target = endpoint or self.primary
        return {
            "host": target.host,
            "port": target.port,
            "dbname": database or self.database,
            "user": self.admin_user,
            "password": self.admin_password,
            "sslmode": self.sslmode,
            "connect_timeout": 5,
        }

    def to_property(self) -> dict[str, Any]:
        """The spec as a plain mapping, the shape resources of the database layer take as an input."""
        return {
            "platform": self.platform,
            "primary": vars(self.primary),
            "database": self.database,
            "adminUser": self.admin_user,
            "adminPassword": self.admin_password,
            "pooler": vars(self.pooler) if self.pooler else None,
            "replicas": [vars(r) for r in self.replicas],
            "redis": vars(self.redis) if self.redis else None,
            "redisPassword": self.redis_password,
            "sslmode": self.sslmode,
            "readDatabase": self.read_database,
        }

    @classmethod
    def from_property(cls, value: dict[str, Any]) -> ConnectionSpec:
        def endpoint(raw: dict[str, Any] | None) -> Endpoint | None:
            return Endpoint(raw["host"], int(raw["port"])) if raw else None

        primary = endpoint(value["primary"])
        assert primary is not None
        return cls(
            platform=value["platform"],
            primary=primary,
            database=value["database"],
            admin_user=value["adminUser"],
            admin_password=value["adminPassword"],
            pooler=endpoint(value.get("pooler")),
            replicas=tuple(Endpoint(r["host"], int(r["port"])) for r in value.get("replicas") or []),
            redis=endpoint(value.get("redis")),
            redis_password=value.get("redisPassword"),
            sslmode=value.get("sslmode", "prefer"),
            read_database=value.get("readDatabase"),
        )
