"""The issuer's JSON Web Key Set: fetched with httpx, cached, refreshed on an unknown ``kid``."""

import asyncio
import logging
import time
from typing import Any

import httpx
from fastapi import HTTPException

from ._claims import KTY, TokenRejected

__all__ = ["JWKSCache"]

logger = logging.getLogger("fastapi_ikstream")


class JWKSCache:
    """The issuer's signing keys, fetched with httpx and kept by ``kid``."""

    def __init__(
        self,
        url: str | None,
        timeout: float,
        cache_seconds: float,
        min_refresh_seconds: float,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.min_refresh_seconds = min_refresh_seconds
        self.keys: list[dict[str, Any]] = []
        self.fetched_at: float | None = None  # monotonic time of the last good fetch
        self.tried_at: float | None = None  # monotonic time of the last attempt
        self._pending: asyncio.Future[None] | None = None  # one fetch, awaited by all

    def _match(self, kid: str | None, alg: str) -> list[dict[str, Any]]:
        return [
            key
            for key in self.keys
            if key.get("kty") == KTY[alg]
            and key.get("alg", alg) == alg
            and (kid is None or key.get("kid") == kid)
        ]

    async def keys_for(self, kid: str | None, alg: str) -> list[dict[str, Any]]:
        """The keys that may have signed a token with this ``kid`` and ``alg``.

        Raises:
            HTTPException: 503, the key set cannot be fetched.
            TokenRejected: the key set is known and has no such key.
        """
        now = time.monotonic()
        found = self._match(kid, alg)
        fresh = self.fetched_at is not None and now - self.fetched_at < self.cache_seconds
        if found and fresh:
            return found
        may_fetch = self.tried_at is None or now - self.tried_at >= self.min_refresh_seconds
        if may_fetch or self._pending is not None:
            await self._refresh()
            found = self._match(kid, alg)
        if found:
            return found
        if self.fetched_at is None or self.tried_at != self.fetched_at:
            raise HTTPException(
                503,
                detail="The token issuer's signing keys cannot be fetched; try again later.",
                headers={"Retry-After": str(max(1, round(self.min_refresh_seconds)))},
            )
        raise TokenRejected("The token's signing key is not known.")

    async def _refresh(self) -> None:
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._fetch())
            self._pending.add_done_callback(self._clear_pending)
        await asyncio.shield(self._pending)

    def _clear_pending(self, task: asyncio.Future[None]) -> None:
        self._pending = None
        if not task.cancelled():
            task.exception()  # failures are logged in _fetch; mark them retrieved

    async def _fetch(self) -> None:
        assert self.url is not None
        self.tried_at = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.get(self.url, headers={"Accept": "application/json"})
            response.raise_for_status()
            document = response.json()
            keys = document["keys"] if isinstance(document, dict) else None
            if not isinstance(keys, list):
                raise ValueError("the JWKS document has no 'keys' list")
        except Exception as exc:
            logger.warning("cannot fetch the JWKS at %s: %r", self.url, exc)
            return
        self.keys = [
            key
            for key in keys
            if isinstance(key, dict) and key.get("use", "sig") == "sig" and key.get("kty")
        ]
        self.fetched_at = self.tried_at
