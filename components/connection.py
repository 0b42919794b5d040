"""The one typed spec that joins the platform layer (where servers run) and the database layer.

A platform hands the database layer a ConnectionSpec; the explicit database provider holds it as its
`connection` input, and the stack exports it once (the `connection` output) for the tools that reach a
stack from outside (ops/, recovery/, bench/, scripts/connect-info). On the wire it is
`model_dump(mode="json")` (camelCase keys) and it is read back with `model_validate`.
"""

from __future__ import annotations

from typing import Any

from psycopg.conninfo import make_conninfo
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

#: The address the servers of the local platform listen on, and the docker platform publishes ports on:
#: loopback only, never a public interface.
LOOPBACK = "127.0.0.1"


class _Wire(BaseModel):
    """camelCase on the wire, snake_case in Python, immutable, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, serialize_by_alias=True, frozen=True, extra="forbid"
    )


class Endpoint(_Wire):
    """A host and port something listens on."""

    host: str
    port: int

    @classmethod
    def loopback(cls, port: int) -> Endpoint:
        return cls(host=LOOPBACK, port=port)


class HaEndpoints(_Wire):
    """With `thorbis:ha`: where the cluster's managers listen (verify, patronictl and etcdctl use them); the
    primary endpoint of the ConnectionSpec is HAProxy's write port, its replicas HAProxy's read port."""

    patroni: tuple[Endpoint, ...]
    etcd: tuple[Endpoint, ...]


class ConnectionSpec(_Wire):
    """How to reach a stack's data platform, whatever platform started it.

    `admin_password` and `redis_password` are secrets: the platform hands this spec over inside a secret
    Output, and the stack exports it only as a secret.
    """

    platform: str
    primary: Endpoint
    database: str
    admin_user: str
    admin_password: str = Field(repr=False)
    pooler: Endpoint | None = None
    replicas: tuple[Endpoint, ...] = ()
    redis: Endpoint | None = None
    redis_password: str | None = Field(default=None, repr=False)
    sslmode: str = "prefer"
    ha: HaEndpoints | None = None
    #: The pooler's database whose server connections go to the replicas (None: reads use `database`).
    read_database: str | None = None

    def for_database(self) -> ConnectionSpec:
        """What the database layer uses: the primary (with ha, the write endpoint) and its admin; nothing of
        the replicas, the HA nodes, the pooler or Redis, so that adding one of those does not make every
        database object wait on it."""
        return self.model_copy(
            update={"pooler": None, "replicas": (), "redis": None, "redis_password": None, "ha": None}
        )

    def conninfo(
        self,
        endpoint: Endpoint | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments for psycopg.connect: the admin user on the primary unless told otherwise."""
        target = endpoint or self.primary
        return {
            "host": target.host,
            "port": target.port,
            "dbname": database or self.database,
            "user": user or self.admin_user,
            "password": self.admin_password if user is None else password,
            "sslmode": self.sslmode,
            "connect_timeout": 5,
        }

    def dsn(
        self,
        endpoint: Endpoint | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
    ) -> str:
        """`conninfo` as a libpq connection string (psycopg, psql and libpq take it as their dsn/dbname)."""
        return make_conninfo("", **self.conninfo(endpoint, user=user, password=password, database=database))
