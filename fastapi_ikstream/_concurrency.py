"""`ConcurrencyLimit`: the runs a caller may have open at once.

A dict in memory, or a Redis sorted set whose members expire, so a crashed worker cannot
hold a slot forever. Exported by `fastapi_ikstream.ratelimit`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException

from ._limit_storage import REDIS_SCHEMES, redis_asyncio, storage_unavailable, unique_scope

__all__ = ["ConcurrencyLimit", "Release"]

logger = logging.getLogger("fastapi_ikstream")

Release = Callable[[], Awaitable[None]]
"""Frees a slot taken by `ConcurrencyLimit.acquire`; calling it again does nothing."""


async def _uncounted() -> None:
    """The release of a run let through uncounted while the storage was down."""


_ACQUIRE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


class ConcurrencyLimit:
    """At most ``max_concurrent_runs`` runs at once per key (a principal's subject, say).

    A slot is held from `acquire` until its release function is called, or, as a safety
    net for a crashed worker, until ``lease_seconds`` have passed.

    Args:
        max_concurrent_runs: slots per key, at least 1.
        storage_uri: ``"memory://"`` (default, one process) or ``"redis://host:port/db"``
            (several workers; needs the ``redis`` extra).
        scope: namespace of the slots in the storage. Default: unique to this instance,
            which is only allowed with ``memory://``.
        lease_seconds: a slot not released after this many seconds is freed. Keep it
            longer than the longest run. Default 3600.0.
        fail_open: when the storage cannot be reached, let the run start uncounted (and
            log a warning) instead of answering 503. Default False.

    Raises:
        ValueError: ``max_concurrent_runs`` below 1, a non-positive lease, an unknown
            storage, or a shared storage without ``scope``.
        MissingExtraError: a ``redis://`` storage without redis-py installed.
    """

    def __init__(
        self,
        max_concurrent_runs: int,
        *,
        storage_uri: str = "memory://",
        scope: str | None = None,
        lease_seconds: float = 3600.0,
        fail_open: bool = False,
    ) -> None:
        if max_concurrent_runs < 1:
            raise ValueError("max_concurrent_runs must be at least 1")
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        storage_uri = storage_uri.removeprefix("async+")
        scheme = urlsplit(storage_uri).scheme
        if scheme != "memory" and scheme not in REDIS_SCHEMES:
            raise ValueError(f"unknown storage {storage_uri!r}: use memory:// or redis://")
        self.max_concurrent_runs = max_concurrent_runs
        self.scope = unique_scope(scope, storage_uri)
        self.lease_seconds = lease_seconds
        self.fail_open = fail_open
        self._slots: dict[str, dict[str, float]] = {}
        self._redis: Any = None
        if scheme in REDIS_SCHEMES:
            aioredis = redis_asyncio("a redis:// concurrency storage")
            self._redis = aioredis.Redis.from_url(storage_uri)
            self._script = self._redis.register_script(_ACQUIRE)

    async def acquire(self, key: str) -> Release:
        """Take a slot for ``key``.

        Args:
            key: whose slots to count, e.g. ``principal.subject``.

        Returns:
            an async function that frees the slot; it is safe to call more than once and
            completes even if the calling task is cancelled.

        Raises:
            HTTPException: 429 when ``key`` already holds ``max_concurrent_runs`` slots;
                503 when the storage fails (unless ``fail_open``).
        """
        token = uuid.uuid4().hex
        name = f"ikstream:runs:{self.scope}:{key}"
        if self._redis is None:
            taken = self._take_in_memory(name, token)
        else:
            try:
                lease_ms = math.ceil(self.lease_seconds * 1000)
                taken = bool(
                    await self._script(
                        keys=[name], args=[self.max_concurrent_runs, lease_ms, token]
                    )
                )
            except Exception as exc:
                logger.warning("concurrency storage failed: %r", exc)
                if self.fail_open:
                    return _uncounted
                raise storage_unavailable("concurrency-limit") from None
        if not taken:
            n = self.max_concurrent_runs
            raise HTTPException(
                429,
                detail={
                    "error": "too_many_runs",
                    "message": f"At most {n} run{'s' if n > 1 else ''} at once: "
                    "wait for one to finish.",
                    "max_concurrent_runs": n,
                },
            )
        done = False

        async def release() -> None:
            nonlocal done
            if done:
                return
            done = True
            if self._redis is None:
                slots = self._slots.get(name)
                if slots is not None:
                    slots.pop(token, None)
                    if not slots:
                        del self._slots[name]
                return
            try:
                await asyncio.shield(self._redis.zrem(name, token))
            except Exception as exc:  # the lease frees the slot later
                logger.warning("cannot release a run slot: %r", exc)

        return release

    def _take_in_memory(self, name: str, token: str) -> bool:
        now = time.monotonic()
        slots = self._slots.setdefault(name, {})
        for held, expires in list(slots.items()):
            if expires <= now:
                del slots[held]
        if len(slots) >= self.max_concurrent_runs:
            return False
        slots[token] = now + self.lease_seconds
        return True

    async def aclose(self) -> None:
        """Close the Redis connections; the limit is unusable afterwards."""
        if self._redis is not None:
            await self._redis.aclose()
