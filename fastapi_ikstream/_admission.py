"""Admission: what a request must pass before the router acquires anything for it.

The order is fixed: auth (the router's ``auth`` dependency, 401/403) → validation (FastAPI,
422; 406 and 413 before it) → limits (here, 429). Only a request that passed all three
creates a run or opens a stream, so a rejected request holds nothing afterwards.

Limits, per caller (see `quota_key`: the principal's identity, or the address when
anonymous):

- the router's ``rate_limit``: each request that starts a run counts once;
- `Quotas.resumes`: each request that continues a run (a ``Last-Event-ID`` or a cursor)
  counts once, in a budget of its own, so reconnects cannot bypass the rate limit and
  cannot eat a caller's run budget either;
- `Quotas.runs` (and ``max_concurrent_runs``): unfinished runs, detached ones included,
  counted by the run store when the run is created;
- `Quotas.streams`: open streams on this worker.

Every refusal is a 429 with a JSON body and ``Retry-After``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from starlette.requests import Request

from ._identity import quota_key

__all__ = ["Admission", "Quotas", "quota_refused"]

QUOTA_RETRY_AFTER = 5
"""``Retry-After`` (seconds) of a 429 for a full quota: when a run or stream ends is unknown."""


@dataclass(frozen=True, slots=True)
class Quotas:
    """Per-caller bounds that keep one caller from crowding out the others.

    Attributes:
        runs: unfinished runs per caller, detached ones included (429 beyond); None for no
            bound. The stricter of this and ``max_concurrent_runs`` applies. Default 100.
        streams: open streams per caller on this worker (429 beyond); None for no bound.
            Default 100.
        resumes: budget of requests that continue a run (``Last-Event-ID`` or a cursor), in
            the ``limits`` notation; None for no bound. Default ``"120/minute"``.
    """

    runs: int | None = 100
    streams: int | None = 100
    resumes: str | None = "120/minute"


def quota_refused(code: str, message: str) -> HTTPException:
    """A 429 for a full quota, with ``Retry-After``."""
    return HTTPException(
        429,
        detail={"error": code, "message": message, "retry_after": QUOTA_RETRY_AFTER},
        headers={"Retry-After": str(QUOTA_RETRY_AFTER)},
    )


class Admission:
    """The limits of one router (see the module docstring).

    Args:
        rate_limit: a ``RateLimit`` (or anything with ``async hit(request, principal)``
            returning headers), or None.
        quotas: the per-caller quotas.
        max_concurrent_runs: unfinished runs per caller, or None.
        resume_limit: the resume budget (a ``RateLimit`` for ``quotas.resumes``), or None.
        trust_forwarded_for: key anonymous callers on ``X-Forwarded-For``.
    """

    def __init__(
        self,
        *,
        rate_limit: Any,
        quotas: Quotas,
        max_concurrent_runs: int | None,
        resume_limit: Any,
        trust_forwarded_for: bool,
    ) -> None:
        self.rate_limit = rate_limit
        self.quotas = quotas
        self.trust_forwarded_for = trust_forwarded_for
        bounds = [b for b in (max_concurrent_runs, quotas.runs) if b is not None]
        self.max_active: int | None = min(bounds) if bounds else None
        self.resume_limit: Any = resume_limit
        self._streams: dict[str, int] = {}

    def key(self, request: Request, principal: Any) -> str:
        """The caller's key for every limit (see `quota_key`)."""
        return quota_key(request, principal, trust_forwarded_for=self.trust_forwarded_for)

    async def admit_run(self, request: Request, principal: Any) -> dict[str, str]:
        """Count a request that starts a run; returns the rate-limit headers to send.

        Raises:
            HTTPException: 429 when the rate limit is spent; 503 when its storage fails.
        """
        if self.rate_limit is None:
            return {}
        return dict(await self.rate_limit.hit(request, principal))

    async def admit_resume(self, request: Request, principal: Any) -> None:
        """Count a request that continues a run against the resume budget.

        Raises:
            HTTPException: 429 when the budget is spent; 503 when its storage fails.
        """
        if self.resume_limit is not None:
            await self.resume_limit.hit(request, principal)

    def open_stream(self, key: str) -> None:
        """Count an open stream of ``key`` in; pair it with `close_stream`.

        Raises:
            HTTPException: 429 when ``key`` has `Quotas.streams` open streams here.
        """
        limit = self.quotas.streams
        held = self._streams.get(key, 0)
        if limit is not None and held >= limit:
            raise quota_refused(
                "too_many_streams", f"At most {limit} open streams at once: close one first."
            )
        self._streams[key] = held + 1

    def close_stream(self, key: str) -> None:
        """Count an open stream of ``key`` out."""
        held = self._streams.get(key, 0) - 1
        if held > 0:
            self._streams[key] = held
        else:
            self._streams.pop(key, None)

    async def aclose(self, *, own_rate_limit: bool) -> None:
        """Close the storage connections of the limits this object made (Redis pools).

        Args:
            own_rate_limit: the rate limit was made by the router (from a string), not
                handed in by the app, which then closes it itself.
        """
        for made in (self.rate_limit if own_rate_limit else None, self.resume_limit):
            if made is not None:
                await made.aclose()

    def open_streams(self, key: str) -> int:
        """Streams ``key`` has open on this worker."""
        return self._streams.get(key, 0)
