"""Rate limits through an app's own slowapi ``Limiter``: its storage, its key function.

An app that already runs slowapi has a ``Limiter`` configured (storage, key function,
headers). ``create_router(rate_limit=(limiter, "10/minute"))`` counts the router's runs in
that limiter's storage, keyed by that limiter's key function, so one budget spans the app's
slowapi routes and the router. A refused request raises slowapi's own ``RateLimitExceeded``
when the app installed slowapi's handler for it (so the app's 429 form is kept), else the
router's 429 JSON. The counting itself is done by `limits`, the library under slowapi.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from ._exceptions import MissingExtraError

try:
    from limits import RateLimitItem, parse_many
    from limits.storage import MemoryStorage
    from slowapi import Limiter
    from slowapi.errors import RateLimitExceeded
    from slowapi.wrappers import Limit
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise MissingExtraError("ratelimit", "fastapi_ikstream's slowapi support") from _exc

from ._ratelimit_headers import rate_limit_headers, rate_limited

__all__ = ["SlowAPILimit", "limiter_key_func"]


def limiter_key_func(limiter: Limiter) -> Callable[[Request], str]:
    """The key function a slowapi ``Limiter`` was built with.

    slowapi keeps it in an attribute without a public accessor; this adapter is the only
    place that reads it (tested against the slowapi versions the ``ratelimit`` extra allows).
    """
    key_func: Callable[[Request], str] = vars(limiter)["_key_func"]
    return key_func


class SlowAPILimit:
    """Request budgets counted in a slowapi ``Limiter``'s storage, per its key function.

    Args:
        limiter: the app's ``slowapi.Limiter``.
        limits: the router's budget in the notation slowapi and `limits` share, e.g.
            ``"10/minute;200/day"``.
        scope: the budget's name in the storage (slowapi's "scope"); routers with the same
            scope share a budget. Default ``"ikstream"``.
        key_func: who is counted; default the limiter's own key function.

    Raises:
        ValueError: ``limits`` cannot be parsed.
    """

    def __init__(
        self,
        limiter: Limiter,
        limits: str,
        *,
        scope: str = "ikstream",
        key_func: Callable[[Request], str] | None = None,
    ) -> None:
        try:
            items = parse_many(limits)
        except ValueError:
            raise ValueError(f"cannot parse the rate limit {limits!r}") from None
        self.limiter = limiter
        self.items: list[RateLimitItem] = sorted(items, key=lambda item: item.get_expiry())
        self.scope = scope
        self.key_func = key_func or limiter_key_func(limiter)

    async def hit(self, request: Request, principal: Any = None) -> dict[str, str]:
        """Count one request against every limit; returns the ``X-RateLimit-*`` headers.

        Raises:
            RateLimitExceeded: a limit is spent and the app handles slowapi's exception.
            HTTPException: a limit is spent (429 JSON with ``Retry-After``), otherwise.
        """
        backend = self.limiter.limiter  # a `limits` strategy over the limiter's storage
        key = self.key_func(request)
        blocking = not isinstance(backend.storage, MemoryStorage)
        for item in self.items:
            if blocking:  # slowapi's storages are synchronous: keep the loop free
                allowed = await asyncio.to_thread(backend.hit, item, key, self.scope)
            else:
                allowed = backend.hit(item, key, self.scope)
            if not allowed:
                raise self._refused(request, item, key)
        reset, remaining = backend.get_window_stats(self.items[0], key, self.scope)
        return rate_limit_headers(self.items[0], max(0, remaining), reset, None)

    def _refused(self, request: Request, item: RateLimitItem, key: str) -> Exception:
        reset, _ = self.limiter.limiter.get_window_stats(item, key, self.scope)
        if RateLimitExceeded in request.app.exception_handlers:
            limit = Limit(item, self.key_func, self.scope, False, None, None, None, 1, False)
            # slowapi's handler reads the limit that was hit from the request state
            request.state.view_rate_limit = (item, [key, self.scope])
            return RateLimitExceeded(limit)
        return rate_limited(item, reset)
