"""ThorbisClient: the application's data path, from the stack's outputs to cached, routed transactions."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg

from thorbis_client.cache import Lookup, TieredCache
from thorbis_client.config import ClientConfig
from thorbis_client.database import Database, Stats, Transaction, canonical_uuid

T = TypeVar("T")


@dataclass(frozen=True)
class Fetched:
    """A cached entry's value and where it came from: "cache", "waited" (another caller's load) or
    "database"."""

    value: Any
    source: str


class ThorbisClient:
    """Transactions on the write or read pool with a caller's claims, and the review's cache tiers.

    `transaction` is a block run once; `run` re-runs read-only work when a server connection breaks
    (a replica stopped under it), and `cached` serves a family's entry from Redis or loads it with
    `run`. Close the client (or use it as a context manager) to close its pools.
    """

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.database = Database(config, self.stats)
        self.cache = TieredCache(config.redis_url, config.cache)

    @classmethod
    def from_outputs(cls, outputs: dict[str, Any], **options: Any) -> ThorbisClient:
        return cls(ClientConfig.from_outputs(outputs, **options))

    def close(self) -> None:
        self.database.close()
        self.cache.close()

    def __enter__(self) -> ThorbisClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(
        self, company_id: object, user_id: object, *, read_only: bool = False, min_lsn: str | None = None
    ) -> Iterator[Transaction]:
        """One transaction as `user_id` of `company_id`: claims and role for this transaction only.

        Read-only work goes to the read pool unless the caller's last commit (or `min_lsn`) is not
        replayed there yet. A write's `invalidate` calls take effect once it has committed.
        """
        company, user = canonical_uuid(company_id), canonical_uuid(user_id)
        if read_only:
            with self.database.read(company, user, min_lsn) as transaction:
                yield transaction
            return
        with self.database.write(company, user) as transaction:
            yield transaction
        assert transaction.commit_lsn is not None
        for family, key in transaction.invalidations:
            self.cache.invalidate(self.cache.key(company, family, key), family, transaction.commit_lsn)

    def run(
        self,
        company_id: object,
        user_id: object,
        work: Callable[[Transaction], T],
        *,
        read_only: bool = False,
        min_lsn: str | None = None,
    ) -> T:
        """`work` in one transaction; read-only work is run again (up to `read_attempts` in all) when a
        server connection breaks, so a replica that stops costs a retry, not an error."""
        attempts = self.config.read_attempts if read_only else 1
        for attempt in range(1, attempts + 1):
            try:
                with self.transaction(company_id, user_id, read_only=read_only, min_lsn=min_lsn) as transaction:
                    return work(transaction)
            except psycopg.OperationalError:  # ConnectionLost among them: the server connection broke
                if attempt == attempts:
                    raise
                self.stats.add("read_retries")
                time.sleep(self.config.read_retry_backoff_ms * attempt / 1000)
        raise AssertionError("unreachable")

    def cached(
        self, company_id: object, user_id: object, family: str, key: object, load: Callable[[Transaction], Any]
    ) -> Any:
        """The entry `family`/`key` of the caller's company: from the cache, or loaded by `load` in a
        read-only transaction with the caller's claims (so it can only see that company's rows), then
        cached for the family's TTL. Values are JSON: a miss returns what a hit would."""
        return self.fetch(company_id, user_id, family, key, load).value

    def fetch(
        self, company_id: object, user_id: object, family: str, key: object, load: Callable[[Transaction], Any]
    ) -> Fetched:
        """`cached`, saying where the value came from: the cache, another caller's load, or the database."""
        cache_key = self.cache.key(company_id, family, key)
        found = self.cache.get(cache_key)
        if found.hit:
            self.stats.add("cache_hits")
            return Fetched(found.value, "cache")
        self.stats.add("cache_misses")
        if not self.cache.try_lock(cache_key):
            waited = self.cache.wait_for_value(cache_key)
            if waited.hit:
                self.stats.add("cache_waits")
                return Fetched(waited.value, "waited")
            found = waited
        try:
            return Fetched(self._load(company_id, user_id, family, cache_key, found, load), "database")
        finally:
            self.cache.unlock(cache_key)

    def _load(
        self,
        company_id: object,
        user_id: object,
        family: str,
        cache_key: str,
        found: Lookup,
        load: Callable[[Transaction], Any],
    ) -> Any:
        value = self.run(company_id, user_id, load, read_only=True, min_lsn=found.min_lsn)
        self.stats.add("cache_loads")
        value = TieredCache.as_json(value)
        self.cache.fill(cache_key, family, found, value)
        return value
