"""What a client needs, read from the stack's outputs (`pulumi stack output --json --show-secrets`)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CachePolicy:
    """The stack's `cachePolicy` output: key prefix, each family's TTL, and the cache's timings."""

    key_prefix: str
    family_ttl_seconds: Mapping[str, int]
    stampede_lock_ms: int = 3000
    redis_timeout_ms: int = 200
    redis_retry_ms: int = 2000

    @classmethod
    def from_output(cls, policy: Mapping[str, Any]) -> CachePolicy:
        return cls(
            key_prefix=str(policy["keyPrefix"]),
            family_ttl_seconds={str(k): int(v) for k, v in policy["familyTtlSeconds"].items()},
            stampede_lock_ms=int(policy.get("stampedeLockMs", 3000)),
            redis_timeout_ms=int(policy.get("redisTimeoutMs", 200)),
            redis_retry_ms=int(policy.get("redisRetryMs", 2000)),
        )

    def ttl(self, family: str) -> int:
        """The TTL of a declared family; any other family is refused (it has no tier)."""
        try:
            return self.family_ttl_seconds[family]
        except KeyError:
            known = ", ".join(sorted(self.family_ttl_seconds))
            raise ValueError(f"cache family {family!r} is not in thorbis:cache tiers (known: {known})") from None


@dataclass(frozen=True)
class ClientConfig:
    """DSNs of the write and read pools, the Redis URL and the cache policy; pool sizes and retries."""

    write_dsn: str = field(repr=False)
    read_dsn: str = field(repr=False)
    redis_url: str | None = field(repr=False)
    cache: CachePolicy
    pool_min_size: int = 1
    pool_max_size: int = 10
    read_attempts: int = 3
    """A read-only unit of work that fails on a broken server connection is run again this many times in all."""
    read_retry_backoff_ms: int = 600
    """The wait before the n-th retry is n times this: long enough in all for PgBouncer's serverLoginRetry
    (1 s) to pass and the read router to re-point the pool, which a quick retry would not outlast."""
    read_your_writes_wait_ms: int = 0
    """How long a read waits for its replica to replay the caller's last commit before going to the primary."""

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, Any], **options: Any) -> ClientConfig:
        """From the stack's outputs as `pulumi stack output --json --show-secrets` prints them."""
        return cls(
            write_dsn=str(outputs["writeDsn"]),
            read_dsn=str(outputs["readDsn"]),
            redis_url=str(outputs["redisUrl"]) if outputs.get("redisUrl") else None,
            cache=CachePolicy.from_output(outputs["cachePolicy"]),
            **options,
        )

    @classmethod
    def from_stack(cls, stack: str, project_dir: Path | str = ".", **options: Any) -> ClientConfig:
        """Ask `pulumi` for the outputs of `stack` (the CLI must be on PATH and logged in to its backend)."""
        printed = subprocess.run(
            ["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", stack],
            cwd=project_dir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return cls.from_outputs(json.loads(printed), **options)
