"""`create_router`'s options, checked once, and the values derived from them.

`RouterOptions` holds every option but the deployment; the router's parts (`_routing`
assembles them) and its routes (`_register`) read what they need from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.params import Depends as DependsParam
from pydantic import BaseModel

from ._admission import Quotas
from ._observe import OnUsage
from ._runs import DisconnectPolicy
from ._store import RunStore

__all__ = ["RouterOptions"]


@dataclass(frozen=True, kw_only=True)
class RouterOptions:
    """The options of one `create_router` call (documented there), deployment aside."""

    path: str
    request_model: type[BaseModel] | None
    auth: Callable[..., Any] | None
    rate_limit: Any
    rate_limit_storage: str
    rate_limit_scope: str | None
    rate_limit_fail_open: bool
    max_concurrent_runs: int | None
    quotas: Quotas | None
    keep_alive: float
    retry: int | None
    include_inputs: bool
    dependencies: Sequence[DependsParam]
    tags: list[str] | None
    store: RunStore | str | None
    on_disconnect: DisconnectPolicy
    reconnect_grace: float
    drain_timeout: float
    timeout: float | None
    max_body_size: int
    trust_forwarded_for: bool
    name: str | None
    browser_module: bool
    named_events: bool
    on_usage: OnUsage | None
    metrics: Any

    def check(self) -> None:
        """Refuse the combinations that cannot work, before anything is made.

        Raises:
            ValueError: ``reconnect_grace`` is above 0 but not longer than ``retry`` with
                ``on_disconnect="cancel"``; a slowapi ``Limiter`` given without its limits.
        """
        self._check_timing()
        limit = self.rate_limit
        if type(limit).__name__ == "Limiter" and type(limit).__module__.startswith("slowapi"):
            raise ValueError('give the limits with the slowapi Limiter: (limiter, "10/minute")')

    def _check_timing(self) -> None:
        """A client that obeys ``retry:`` must find its run still there when it comes back."""
        grace, retry = self.reconnect_grace, self.retry
        if self.on_disconnect != "cancel" or retry is None or grace == 0:
            return  # 0 is the explicit choice to cancel at once (attached runs cannot resume)
        if grace * 1000 <= retry:
            raise ValueError(
                f"reconnect_grace ({grace} s) must be longer than the retry delay "
                f"({retry} ms): a client that waits the retry delay would find its run cancelled"
            )

    @property
    def label(self) -> str:
        """The operation id prefix and summary name: ``name``, or one made from ``path``."""
        return self.name or (self.path.strip("/").replace("/", "_").replace("-", "_") or "run")

    @property
    def scope(self) -> str | None:
        """The rate limits' budget name: given, ``ikstream:{label}`` when shared, or None."""
        shared = not self.rate_limit_storage.startswith("memory://")
        return self.rate_limit_scope or (f"ikstream:{self.label}" if shared else None)

    @property
    def owns_rate_limit(self) -> bool:
        """Whether the router made its rate limit (from a string), so it must close it."""
        return isinstance(self.rate_limit, str)

    def rate_limiter(self) -> Any:
        """A ``RateLimit`` from a string, a `SlowAPILimit` from ``(limiter, limits)``."""
        if isinstance(self.rate_limit, tuple):
            from ._slowapi import SlowAPILimit

            limiter, limits = self.rate_limit
            return SlowAPILimit(limiter, limits, scope=self.scope or "ikstream")
        if not self.owns_rate_limit:
            return self.rate_limit
        from .ratelimit import RateLimit

        return RateLimit(
            self.rate_limit,
            storage_uri=self.rate_limit_storage,
            scope=self.scope,
            trust_forwarded_for=self.trust_forwarded_for,
            fail_open=self.rate_limit_fail_open,
        )

    def resume_limiter(self, quotas: Quotas) -> Any:
        """The ``RateLimit`` of ``quotas.resumes`` (beside the run budget), or None."""
        if quotas.resumes is None:
            return None
        from .ratelimit import RateLimit

        scope = self.scope
        return RateLimit(
            quotas.resumes,
            storage_uri=self.rate_limit_storage,
            scope=None if scope is None else scope + ":resume",
            trust_forwarded_for=self.trust_forwarded_for,
            fail_open=self.rate_limit_fail_open,
        )
