"""The review's cache tiers over Redis, keyed by company, and never a reason for a request to fail.

Keys are `<prefix>:<company uuid>:<family>|<key>`: the company is a canonical UUID (nothing else passes)
and comes first, the family is a declared one (no `|` in it), so no key of one company can name another
company's entry, nor one family's entry another's. A write leaves a tombstone holding its commit LSN
instead of deleting the key: a reader that finds it loads from a server that has replayed that LSN, and
a fill only lands on the exact value it replaced (compare-and-set), so a slow reader that loaded before
the write cannot put the old value back. A cold key has one loader at a time (a lock with a TTL); the
others wait for its value, at most the lock's TTL. Any Redis error opens a breaker: the cache is skipped
for `redis_retry_ms` (one timeout, not one per read) and invalidations wait in memory until it answers.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from thorbis_client.config import CachePolicy

PENDING_LIMIT = 10_000
# Set KEYS[1] to ARGV[2] for ARGV[3] ms only if it still holds ARGV[1] ('' = no value).
_COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1])
if (current == false and ARGV[1] == '') or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


def company_uuid(company_id: object) -> str:
    """The canonical text of a company's UUID; anything that is not one is refused."""
    return str(company_id if isinstance(company_id, uuid.UUID) else uuid.UUID(str(company_id)))


@dataclass(frozen=True)
class Lookup:
    """What a key held: a value (hit), a tombstone with the LSN a loader must see, or nothing."""

    raw: str | None
    hit: bool = False
    value: Any = None
    min_lsn: str | None = None


class TieredCache:
    """Get, fill and invalidate namespaced entries; every method degrades to 'miss' when Redis fails."""

    def __init__(self, url: str | None, policy: CachePolicy) -> None:
        self.policy = policy
        timeout = policy.redis_timeout_ms / 1000
        self._redis = (
            redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
                decode_responses=True,
            )
            if url
            else None
        )
        self._compare_and_set = self._redis.register_script(_COMPARE_AND_SET) if self._redis else None
        self._down_until = 0.0
        self._pending: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._overflowed = False
        self._lock = threading.Lock()
        self.errors = 0

    # --- keys --------------------------------------------------------------------------------------------

    def key(self, company_id: object, family: str, key: object) -> str:
        self.policy.ttl(family)  # a declared family, or ValueError
        return f"{self.policy.key_prefix}:{company_uuid(company_id)}:{family}|{key}"

    def lock_key(self, cache_key: str) -> str:
        return f"{self.policy.key_prefix}:lock:{cache_key}"

    # --- Redis, behind the breaker ------------------------------------------------------------------------

    def available(self) -> bool:
        return self._redis is not None and time.monotonic() >= self._down_until

    def _failed(self) -> None:
        with self._lock:
            self.errors += 1
            self._down_until = time.monotonic() + self.policy.redis_retry_ms / 1000

    def _client(self) -> redis.Redis:
        assert self._redis is not None
        if self._pending or self._overflowed:
            self._flush_pending(self._redis)
        return self._redis

    # --- reading and filling -----------------------------------------------------------------------------

    def get(self, cache_key: str) -> Lookup:
        if not self.available():
            return Lookup(raw=None)
        try:
            raw = self._client().get(cache_key)
        except redis.RedisError:
            self._failed()
            return Lookup(raw=None)
        if raw is None:
            return Lookup(raw=None)
        entry = json.loads(str(raw))
        if "t" in entry:
            return Lookup(raw=str(raw), min_lsn=entry["t"])
        return Lookup(raw=str(raw), hit=True, value=entry["v"])

    @staticmethod
    def as_json(value: Any) -> Any:
        """`value` as a hit would return it (JSON types only; anything else is refused)."""
        return json.loads(json.dumps(value))

    def fill(self, cache_key: str, family: str, replaced: Lookup, value: Any) -> bool:
        """Store `value` unless the key changed since `replaced` was read; return whether it landed."""
        if not self.available() or self._compare_and_set is None:
            return False
        entry = json.dumps({"v": value}, separators=(",", ":"))
        ttl_ms = self.policy.ttl(family) * 1000
        try:
            return bool(self._compare_and_set(keys=[cache_key], args=[replaced.raw or "", entry, ttl_ms]))
        except redis.RedisError:
            self._failed()
            return False

    def try_lock(self, cache_key: str) -> bool:
        """Whether this caller is the one loader of a cold key (True too when Redis cannot say)."""
        if not self.available():
            return True
        try:
            return bool(self._client().set(self.lock_key(cache_key), "1", nx=True, px=self.policy.stampede_lock_ms))
        except redis.RedisError:
            self._failed()
            return True

    def unlock(self, cache_key: str) -> None:
        if not self.available():
            return
        try:
            self._client().delete(self.lock_key(cache_key))
        except redis.RedisError:
            self._failed()

    def wait_for_value(self, cache_key: str) -> Lookup:
        """Poll for the value another loader is making, up to the lock's TTL; a miss when it never comes."""
        deadline = time.monotonic() + self.policy.stampede_lock_ms / 1000
        pause = 0.002
        while time.monotonic() < deadline and self.available():
            time.sleep(pause)
            found = self.get(cache_key)
            if found.hit:
                return found
            pause = min(pause * 2, 0.05)
        return self.get(cache_key)

    # --- invalidation --------------------------------------------------------------------------------------

    def invalidate(self, cache_key: str, family: str, commit_lsn: str) -> None:
        """Replace the entry by a tombstone holding the writer's commit LSN (kept for the family's TTL)."""
        tombstone = json.dumps({"t": commit_lsn}, separators=(",", ":"))
        if self.available():
            try:
                self._client().set(cache_key, tombstone, px=self.policy.ttl(family) * 1000)
                return
            except redis.RedisError:
                self._failed()
        self._remember(cache_key, family, tombstone)

    def _remember(self, cache_key: str, family: str, tombstone: str) -> None:
        with self._lock:
            self._pending[cache_key] = (family, tombstone)
            self._pending.move_to_end(cache_key)
            if len(self._pending) > PENDING_LIMIT:
                self._pending.clear()
                self._overflowed = True

    def _flush_pending(self, client: redis.Redis) -> None:
        """Invalidations made while Redis was away; past PENDING_LIMIT, every entry of the prefix goes."""
        with self._lock:
            pending, overflowed = list(self._pending.items()), self._overflowed
            self._pending.clear()
            self._overflowed = False
        try:
            if overflowed:
                for found in client.scan_iter(match=f"{self.policy.key_prefix}:*", count=1000):
                    client.delete(found)
            for cache_key, (family, tombstone) in pending:
                client.set(cache_key, tombstone, px=self.policy.ttl(family) * 1000)
        except redis.RedisError:
            with self._lock:
                for cache_key, entry in pending:
                    self._pending.setdefault(cache_key, entry)
                self._overflowed |= overflowed
            raise

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
