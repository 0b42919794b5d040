"""thorbisdb:local:Redis — a password-protected Redis on 127.0.0.1, persistence on or off per stack."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import redis
from pydantic import Field, field_validator
from redis.backoff import NoBackoff
from redis.retry import Retry

from components.connection import LOOPBACK
from components.kind import Expect, Kind, Observed, ProviderError, Replace, Secret, Spec, Status
from components.platform.local import process

TOKEN = "thorbisdb:local:Redis"
EvictionPolicy = Literal[
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
]
"""Redis's maxmemory-policy values."""
_MEMORY = re.compile(r"^(\d+)\s*(b|k|kb|m|mb|g|gb)?$", re.IGNORECASE)
_FACTORS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}


def memory_bytes(value: str) -> int:
    match = _MEMORY.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a Redis memory size such as 256mb or 1gb")
    return int(match.group(1)) * _FACTORS[(match.group(2) or "").lower()]


class RedisSpec(Spec):
    state_dir: Replace[str] = Field(description="Directory of redis.conf, its data, log and pidfile.")
    port: int = Field(ge=1024, le=65535, description="Port on 127.0.0.1.")
    password: Secret[str] = Field(min_length=1, description="requirepass (secret).")
    maxmemory: str = Field(default="256mb", description="Memory limit, in Redis units.")
    maxmemory_policy: EvictionPolicy = Field(default="allkeys-lru", description="Eviction policy.")
    persistence: bool = Field(default=False, description="Append-only file and snapshots on or off.")
    allow_data_loss: bool = Field(default=False, description="Whether delete may remove persisted data.")

    @field_validator("maxmemory")
    @classmethod
    def maxmemory_is_a_size(cls, value: str) -> str:
        memory_bytes(value)
        return value


class RedisStatus(Status):
    running: Annotated[bool | None, Expect(True)] = Field(
        default=None, description="Redis runs and answers (false: `up` starts it)."
    )
    password_required: Annotated[bool | None, Expect(True)] = Field(
        default=None,
        description="Redis refuses a client without the declared password (false: it was removed or changed by "
        "hand; `up` sets it again).",
    )


def conf_text(spec: RedisSpec) -> str:
    base = Path(spec.state_dir)
    lines = {
        "bind": LOOPBACK,
        "port": str(spec.port),
        "protected-mode": "yes",
        "daemonize": "yes",
        "dir": str(base),
        "pidfile": str(base / "redis.pid"),
        "logfile": str(base / "redis.log"),
        "requirepass": '"' + spec.password.replace("\\", "\\\\").replace('"', '\\"') + '"',
        "maxmemory": spec.maxmemory,
        "maxmemory-policy": spec.maxmemory_policy,
        "appendonly": "yes" if spec.persistence else "no",
        "save": '"3600 1 300 100 60 10000"' if spec.persistence else '""',
    }
    return "# Managed by thorbis-db.\n" + "".join(f"{key} {value}\n" for key, value in lines.items())


def client(spec: RedisSpec, port: int | None = None, password: str | None = None) -> redis.Redis:
    """One try per call: redis-py retries with backoff by default, which turns a refused password into seconds."""
    return redis.Redis(
        host=LOOPBACK,
        port=port or spec.port,
        password=password if password is not None else spec.password,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 0),
    )


def answering(spec: RedisSpec, port: int | None, passwords: list[str]) -> tuple[str | None, redis.Redis] | None:
    """The first of `passwords` (then none at all: someone may have removed it) Redis accepts, with a client
    logged in with it; None when it answers to none of them."""
    for password in [*dict.fromkeys(passwords), None]:
        connection = client(spec, port, password) if password is not None else anonymous(spec, port)
        try:
            connection.ping()
        except redis.RedisError:
            connection.close()
            continue
        return password, connection
    return None


def anonymous(spec: RedisSpec, port: int | None) -> redis.Redis:
    return redis.Redis(host=LOOPBACK, port=port or spec.port, socket_timeout=5, retry=Retry(NoBackoff(), 0))


class RedisKind(Kind[RedisSpec, RedisStatus]):
    token = TOKEN
    spec_type = RedisSpec
    status_type = RedisStatus
    deleting_loses = "the Redis server {name} and its data would be deleted"

    def create(self, spec: RedisSpec) -> tuple[str, Observed[RedisStatus]]:
        conf = Path(spec.state_dir) / "redis.conf"
        Path(spec.state_dir).mkdir(parents=True, exist_ok=True)
        Path(spec.state_dir).chmod(0o700)
        process.write_private_file(conf, conf_text(spec))
        self.start(spec)
        return str(conf), self.status(spec)

    def start(self, spec: RedisSpec) -> None:
        if process.read_pid(Path(spec.state_dir) / "redis.pid") is None:
            process.run(["redis-server", str(Path(spec.state_dir) / "redis.conf")], "redis-server")
            process.wait_until(lambda: bool(self.status(spec).status.running), 30, f"Redis on port {spec.port}")

    def status(self, spec: RedisSpec, port: int | None = None) -> Observed[RedisStatus]:
        """Whether it runs and answers, whether it still wants the declared password, and its port, memory
        limit, policy and persistence as it reports them (read with whatever it accepts)."""
        if process.read_pid(Path(spec.state_dir) / "redis.pid") is None:
            return Observed({}, RedisStatus(running=False))
        found = answering(spec, port, [spec.password])
        if found is None:
            return Observed({}, RedisStatus(running=False))
        password, connection = found
        with connection as reader:
            live = reader.config_get("maxmemory", "maxmemory-policy", "appendonly", "port")
        inputs = {
            "port": int(live["port"]),
            "maxmemory": spec.maxmemory
            if memory_bytes(spec.maxmemory) == int(live["maxmemory"])
            else live["maxmemory"],
            "maxmemoryPolicy": live["maxmemory-policy"],
            "persistence": live["appendonly"] == "yes",
        }
        return Observed(inputs, RedisStatus(running=True, password_required=password == spec.password))

    def observe(
        self, resource_id: str, spec: RedisSpec, recorded: RedisStatus | None = None
    ) -> Observed[RedisStatus] | None:
        if not Path(resource_id).exists():
            return None
        return self.status(spec)

    def update(self, resource_id: str, old: dict[str, Any], spec: RedisSpec) -> Observed[RedisStatus]:
        process.write_private_file(Path(resource_id), conf_text(spec))
        old_port, old_password = int(old.get("port", spec.port)), old.get("password", spec.password)
        found = (
            answering(spec, old_port, [old_password, spec.password])
            if process.read_pid(Path(spec.state_dir) / "redis.pid")
            else None
        )
        if found is not None:
            with found[1] as live:
                if old_port != spec.port:
                    live.shutdown(save=spec.persistence, nosave=not spec.persistence)
                else:
                    live.config_set("maxmemory", str(memory_bytes(spec.maxmemory)))
                    live.config_set("maxmemory-policy", spec.maxmemory_policy)
                    live.config_set("appendonly", "yes" if spec.persistence else "no")
                    live.config_set("requirepass", spec.password)
        self.start(spec)
        return self.status(spec)

    def delete(self, resource_id: str, spec: RedisSpec, recorded: RedisStatus | None = None) -> None:
        if spec.persistence and not spec.allow_data_loss:
            raise ProviderError(
                f"refusing to delete the persisted Redis data in {spec.state_dir}: this stack does not allow data "
                "loss. `pulumi config set thorbis:allowDataLoss true`, `pulumi up`, and destroy again"
            )
        pidfile = Path(spec.state_dir) / "redis.pid"
        if (pid := process.read_pid(pidfile)) is not None:
            process.terminate(pid, "Redis")
        process.remove_tree(Path(spec.state_dir))
