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

import logging
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

from ._concurrency import ConcurrencyLimit, Release
from ._limit_storage import REDIS_SCHEMES, redis_asyncio, storage_unavailable, unique_scope
from ._ratelimit_headers import policy_header, rate_limit_headers, rate_limited

if TYPE_CHECKING:
    from .security import Principal

__all__ = ["ConcurrencyLimit", "RateLimit", "Release", "SlowAPILimit", "client_address"]  # noqa: F822

logger = logging.getLogger("fastapi_ikstream")

Strategy = Literal["moving-window", "fixed-window", "sliding-window-counter"]

_STRATEGIES: dict[str, type[RateLimiter]] = {
    "moving-window": MovingWindowRateLimiter,
    "fixed-window": FixedWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}


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

    def __init__(  # noqa: PLR0913 - public constructor: keyword-only options
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
        self.scope = unique_scope(scope, storage_uri)
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
            raise storage_unavailable("rate-limit") from None
        (reset, remaining), item = min(stats, key=lambda entry: entry[0].remaining)
        return rate_limit_headers(item, max(0, remaining), reset, self._policy)

    async def _exceeded(self, item: RateLimitItem, key: str) -> HTTPException:
        reset = (await self._limiter.get_window_stats(item, self.scope, key)).reset_time
        return rate_limited(item, reset, rate_limit_headers(item, 0, reset, self._policy))

    async def aclose(self) -> None:
        """Close the storage's connections (Redis); the limit is unusable afterwards."""
        if self._pool is not None:
            await self._pool.disconnect()


def _limits_storage(uri: str) -> tuple[Storage, Any]:
    scheme = urlsplit(uri).scheme.removeprefix("async+")
    options: dict[str, Any] = {"wrap_exceptions": True}
    pool = None
    if scheme in REDIS_SCHEMES:
        aioredis = redis_asyncio("a redis:// rate-limit storage")
        pool = aioredis.ConnectionPool.from_url(uri.removeprefix("async+"))
        options |= {"implementation": "redispy", "connection_pool": pool}
    try:
        storage = storage_from_string(f"async+{uri.removeprefix('async+')}", **options)
    except ConfigurationError as exc:
        raise ValueError(f"unusable rate-limit storage {uri!r}: {exc}") from None
    if not isinstance(storage, Storage):  # pragma: no cover - async+ always gives one
        raise ValueError(f"{uri!r} is not an asyncio storage")
    return storage, pool


def __getattr__(name: str) -> Any:
    """`SlowAPILimit` is imported on first use: only apps that run slowapi need slowapi."""
    if name == "SlowAPILimit":
        from ._slowapi import SlowAPILimit

        return SlowAPILimit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
