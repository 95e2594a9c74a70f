"""Rate-limit responses: the 429, the de-facto ``X-RateLimit-*`` headers and the IETF fields.

The IETF fields follow draft-ietf-httpapi-ratelimit-headers (09): ``RateLimit-Policy``
lists each policy as a Structured Field item, a quoted name with ``q`` (quota, requests)
and ``w`` (window, seconds); ``RateLimit`` names the policy closest to running out with
``r`` (requests remaining) and ``t`` (seconds until the quota is restored)::

    RateLimit-Policy: "10 per 1 minute";q=10;w=60, "200 per 1 day";q=200;w=86400
    RateLimit: "10 per 1 minute";r=7;t=42
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

from fastapi import HTTPException
from limits import RateLimitItem

__all__ = ["policy_header", "rate_limit_headers", "rate_limited"]


def _name(item: RateLimitItem) -> str:
    # an sf-string: printable ASCII, with backslash and double quote escaped
    text = str(item).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def policy_header(items: Sequence[RateLimitItem]) -> str:
    """The ``RateLimit-Policy`` value for every limit of a `RateLimit`."""
    return ", ".join(f"{_name(item)};q={item.amount};w={item.get_expiry()}" for item in items)


def rate_limit_headers(
    item: RateLimitItem, remaining: int, reset: float, policy: str | None
) -> dict[str, str]:
    """The headers for ``item`` with ``remaining`` requests left until ``reset`` (Unix time).

    Args:
        item: the limit closest to running out.
        remaining: requests left in its window.
        reset: when its window frees a request, in Unix seconds.
        policy: the ``RateLimit-Policy`` value, or None to send only ``X-RateLimit-*``.
    """
    headers = {
        "X-RateLimit-Limit": str(item.amount),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(math.ceil(reset)),
    }
    if policy is not None:
        seconds = max(0, math.ceil(reset - time.time()))
        headers["RateLimit-Policy"] = policy
        headers["RateLimit"] = f"{_name(item)};r={remaining};t={seconds}"
    return headers


def rate_limited(
    item: RateLimitItem, reset: float, headers: Mapping[str, str] | None = None
) -> HTTPException:
    """The 429 for ``item``, whose window frees a request at ``reset`` (Unix seconds).

    Args:
        item: the limit that was hit.
        reset: when its window frees a request, in Unix seconds.
        headers: more headers, after ``Retry-After``.
    """
    retry_after = max(1, math.ceil(reset - time.time()))
    return HTTPException(
        429,
        detail={
            "error": "rate_limited",
            "message": f"Rate limit exceeded ({item}). Retry in {retry_after} s.",
            "limit": str(item),
            "retry_after": retry_after,
        },
        headers={"Retry-After": str(retry_after), **(headers or {})},
    )
