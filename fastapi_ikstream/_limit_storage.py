"""What `RateLimit` and `ConcurrencyLimit` share: their storage URIs, redis-py, the 503."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException

from ._exceptions import MissingExtraError

__all__ = ["REDIS_SCHEMES", "redis_asyncio", "storage_unavailable", "unique_scope"]

REDIS_SCHEMES = frozenset({"redis", "rediss"})


def unique_scope(scope: str | None, storage_uri: str) -> str:
    """``scope``, or a name unique to this limit, which only a memory storage may have."""
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


def storage_unavailable(what: str) -> HTTPException:
    """The 503 for a limit whose ``what`` storage cannot be reached."""
    return HTTPException(
        503,
        detail={
            "error": "limit_storage_unavailable",
            "message": f"The {what} storage is unavailable; try again later.",
        },
        headers={"Retry-After": "5"},
    )


def redis_asyncio(what: str) -> Any:
    """``redis.asyncio``, or `MissingExtraError` naming ``what`` needed it."""
    try:
        import redis.asyncio
    except ImportError as exc:
        raise MissingExtraError("redis", what) from exc
    return redis.asyncio
