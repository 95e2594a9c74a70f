"""Rate limits and concurrent-run limits, checked before the first byte of a response.

`RateLimit` counts requests with the `limits` library (the one slowapi is built on), in its
asyncio storage: ``memory://`` in the process, ``redis://host:port`` across workers.
`ConcurrencyLimit` counts the runs a caller has open at once: a dict in memory, or a Redis
sorted set whose members expire, so a crashed worker cannot hold a slot forever.

Both are plain objects that the router calls, not decorators or middleware, which avoids
slowapi's known traps: limits are not keyed by the endpoint function's name (so routers made
by one factory never share budgets, slowapi issue 173), they hold on routers included under
any prefix (slowapi issue 281, where middleware limits skipped included routers), and no
endpoint needs a parameter named ``request``.

A refused request gets a 429 with a JSON body, ``Retry-After``, ``X-RateLimit-*`` and the
IETF ``RateLimit``/``RateLimit-Policy`` headers. A storage that cannot be reached gives a
503 (``fail_open=False``, the default: an ML run costs more than a refused request) or, with
``fail_open=True``, lets the request through uncounted; never a 500.

Example:
    ```python
    limit = RateLimit("10/minute;200/day")

    async def limited(
        request: Request, principal: Annotated[Principal, Security(auth)]
    ) -> None:
        await limit.hit(request, principal)
    ```
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

from ._exceptions import MissingExtraError
from ._identity import client_address, quota_key

try:
    from limits import RateLimitItem, parse_many
    from limits.aio.storage import Storage
    from limits.aio.strategies import (
        FixedWindowRateLimiter,
        MovingWindowRateLimiter,
        RateLimiter,
        SlidingWindowCounterRateLimiter,
    )
    from limits.errors import ConfigurationError, StorageError
    from limits.storage import storage_from_string
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise MissingExtraError("ratelimit", "fastapi_ikstream.ratelimit") from _exc

from ._ratelimit_headers import policy_header, rate_limit_headers

if TYPE_CHECKING:
    from .security import Principal

__all__ = ["ConcurrencyLimit", "RateLimit", "Release", "SlowAPILimit", "client_address"]  # noqa: F822

logger = logging.getLogger("fastapi_ikstream")

Release = Callable[[], Awaitable[None]]
"""Frees a slot taken by `ConcurrencyLimit.acquire`; calling it again does nothing."""

Strategy = Literal["moving-window", "fixed-window", "sliding-window-counter"]

_STRATEGIES: dict[str, type[RateLimiter]] = {
    "moving-window": MovingWindowRateLimiter,
    "fixed-window": FixedWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}
_REDIS_SCHEMES = frozenset({"redis", "rediss"})


def _unique_scope(scope: str | None, storage_uri: str) -> str:
    if scope is not None:
        if not scope:
            raise ValueError("scope must not be empty")
        return scope
    if urlsplit(storage_uri).scheme.removeprefix("async+") != "memory":
        raise ValueError(
            "a shared storage needs an explicit scope, the same in every worker "
            "(e.g. scope='image-api'); otherwise each worker would count on its own"
        )
    return uuid.uuid4().hex


class RateLimit:
    """Request budgets such as ``"10/minute;200/day"``, per caller.

    A caller is keyed by ``principal.subject`` when authenticated, else by its address.
    Each instance has its own budget (its ``scope``): two routers never share one. With
    a shared storage, give the same explicit ``scope`` in every worker so that they count
    together.

    Args:
        limits: one or more limits in the `limits` notation, separated by ``;``, e.g.
            ``"10/minute;200/day"`` or ``"5 per second"``.
        storage_uri: ``"memory://"`` (default, one process) or ``"redis://host:port/db"``
            (several workers; needs the ``redis`` extra). Any storage URI of `limits` works.
        scope: name of the budget in the storage. Default: unique to this instance, which
            is only allowed with ``memory://``.
        trust_forwarded_for: key anonymous callers by ``X-Forwarded-For`` (see
            `client_address`). Default False.
        strategy: ``"moving-window"`` (default, exact), ``"fixed-window"`` (cheapest,
            allows bursts at window edges) or ``"sliding-window-counter"``.
        fail_open: when the storage cannot be reached, let requests through uncounted
            (and log a warning) instead of answering 503. Default False.
        ietf_headers: add the ``RateLimit`` and ``RateLimit-Policy`` headers of
            draft-ietf-httpapi-ratelimit-headers beside ``X-RateLimit-*``. Default True.

    Raises:
        ValueError: an unparsable ``limits`` string, an unknown storage or strategy, or a
            shared storage without ``scope``.
        MissingExtraError: a ``redis://`` storage without redis-py installed.
    """

    def __init__(
        self,
        limits: str,
        *,
        storage_uri: str = "memory://",
        scope: str | None = None,
        trust_forwarded_for: bool = False,
        strategy: Strategy = "moving-window",
        fail_open: bool = False,
        ietf_headers: bool = True,
    ) -> None:
        try:
            items = parse_many(limits)
        except ValueError:
            raise ValueError(f"cannot parse the rate limit {limits!r}") from None
        if strategy not in _STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}, use one of {sorted(_STRATEGIES)}")
        # Shortest window first: a refusal by a long window then costs nothing of it.
        self.items: list[RateLimitItem] = sorted(items, key=lambda item: item.get_expiry())
        self.scope = _unique_scope(scope, storage_uri)
        self.trust_forwarded_for = trust_forwarded_for
        self.fail_open = fail_open
        self._policy = policy_header(self.items) if ietf_headers else None
        self._storage, self._pool = _limits_storage(storage_uri)
        self._limiter = _STRATEGIES[strategy](self._storage)

    def key_for(self, request: Request, principal: Principal | None) -> str:
        """The storage key of a caller (`fastapi_ikstream._identity.quota_key`).

        ``sub:{authority}|{subject}`` for a principal, ``addr:{address}`` when anonymous.
        """
        return quota_key(request, principal, trust_forwarded_for=self.trust_forwarded_for)

    async def hit(self, request: Request, principal: Principal | None = None) -> dict[str, str]:
        """Count one request against every limit.

        Args:
            request: the incoming request (its address keys anonymous callers).
            principal: the authenticated caller, or None.

        Returns:
            ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (Unix
            time in seconds) for the limit closest to running out, and the IETF
            ``RateLimit``/``RateLimit-Policy``, to add to the response; none when the
            storage failed and ``fail_open`` let the request through.

        Raises:
            HTTPException: 429 when a limit is exhausted, with ``Retry-After`` (seconds) and
                the rate-limit headers of that limit; 503 when the storage fails (unless
                ``fail_open``).
        """
        key = self.key_for(request, principal)
        try:
            for item in self.items:
                if not await self._limiter.hit(item, self.scope, key):
                    raise await self._exceeded(item, key)
            stats = [
                (await self._limiter.get_window_stats(i, self.scope, key), i) for i in self.items
            ]
        except StorageError as exc:
            if self.fail_open:
                logger.warning("rate-limit storage failed, request let through: %r", exc)
                return {}
            logger.warning("rate-limit storage failed: %r", exc.storage_error)
            raise _unavailable("rate-limit") from None
        (reset, remaining), item = min(stats, key=lambda entry: entry[0].remaining)
        return rate_limit_headers(item, max(0, remaining), reset, self._policy)

    async def _exceeded(self, item: RateLimitItem, key: str) -> HTTPException:
        reset = (await self._limiter.get_window_stats(item, self.scope, key)).reset_time
        retry_after = max(1, math.ceil(reset - time.time()))
        return HTTPException(
            429,
            detail={
                "error": "rate_limited",
                "message": f"Rate limit exceeded ({item}). Retry in {retry_after} s.",
                "limit": str(item),
                "retry_after": retry_after,
            },
            headers={
                "Retry-After": str(retry_after),
                **rate_limit_headers(item, 0, reset, self._policy),
            },
        )

    async def aclose(self) -> None:
        """Close the storage's connections (Redis); the limit is unusable afterwards."""
        if self._pool is not None:
            await self._pool.disconnect()


def _unavailable(what: str) -> HTTPException:
    return HTTPException(
        503,
        detail={
            "error": "limit_storage_unavailable",
            "message": f"The {what} storage is unavailable; try again later.",
        },
        headers={"Retry-After": "5"},
    )


def _redis_module(what: str) -> Any:
    try:
        import redis.asyncio
    except ImportError as exc:
        raise MissingExtraError("redis", what) from exc
    return redis.asyncio


def _limits_storage(uri: str) -> tuple[Storage, Any]:
    scheme = urlsplit(uri).scheme.removeprefix("async+")
    options: dict[str, Any] = {"wrap_exceptions": True}
    pool = None
    if scheme in _REDIS_SCHEMES:
        aioredis = _redis_module("a redis:// rate-limit storage")
        pool = aioredis.ConnectionPool.from_url(uri.removeprefix("async+"))
        options |= {"implementation": "redispy", "connection_pool": pool}
    try:
        storage = storage_from_string(f"async+{uri.removeprefix('async+')}", **options)
    except ConfigurationError as exc:
        raise ValueError(f"unusable rate-limit storage {uri!r}: {exc}") from None
    if not isinstance(storage, Storage):  # pragma: no cover - async+ always gives one
        raise ValueError(f"{uri!r} is not an asyncio storage")
    return storage, pool


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
        if scheme != "memory" and scheme not in _REDIS_SCHEMES:
            raise ValueError(f"unknown storage {storage_uri!r}: use memory:// or redis://")
        self.max_concurrent_runs = max_concurrent_runs
        self.scope = _unique_scope(scope, storage_uri)
        self.lease_seconds = lease_seconds
        self.fail_open = fail_open
        self._slots: dict[str, dict[str, float]] = {}
        self._redis: Any = None
        if scheme in _REDIS_SCHEMES:
            aioredis = _redis_module("a redis:// concurrency storage")
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
                raise _unavailable("concurrency-limit") from None
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


def __getattr__(name: str) -> Any:
    """`SlowAPILimit` is imported on first use: only apps that run slowapi need slowapi."""
    if name == "SlowAPILimit":
        from ._slowapi import SlowAPILimit

        return SlowAPILimit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
