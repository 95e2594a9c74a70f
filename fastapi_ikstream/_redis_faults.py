"""How the Redis run store turns Redis failures into the store API's exceptions.

Two kinds, told apart by what retrying would do:

- Transient (the connection failed, timed out, or the server is loading): `unavailable`
  logs the driver's text (which names the host and port) on the server and gives a
  `StoreUnavailableError` with a fixed public message.
- Permanent (Redis answered the command with an error, ``ResponseError``): sending the
  same command again gives the same error, so it is never retried; `refused` gives a
  `StoreError`.

`translated` wraps a store method so that it raises only those.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from redis.exceptions import BusyLoadingError, RedisError, ResponseError

from ._exceptions import StoreError, StoreUnavailableError

__all__ = [
    "PROBE_INTERVAL",
    "UNAVAILABLE_AFTER",
    "Health",
    "is_permanent",
    "refused",
    "translated",
    "unavailable",
]

logger = logging.getLogger("fastapi_ikstream")

UNAVAILABLE_AFTER = 2.0
"""Seconds an open stream keeps retrying a failing Redis before it ends (see
``docs/concepts/security.md``): short outages are ridden out, long ones end the stream
with a ``retry:`` hint well within 5 s."""

PROBE_INTERVAL = 1.0
"""Seconds after a failure during which store calls fail without trying Redis."""

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Health:
    """Whether this worker's Redis answers, as its last commands found.

    Readers that hit a failure do not each probe Redis again (hundreds of them would queue
    on the connection pool): they wait here until a command succeeds, or until Redis has
    been failing for `UNAVAILABLE_AFTER` seconds, and then end their stream. Within
    `PROBE_INTERVAL` seconds of a failure, store calls fail at once without I/O (a circuit
    breaker); the next call after that probes Redis again.
    """

    def __init__(self) -> None:
        self.down_since: float | None = None
        self.failed_at: float | None = None
        self._back: asyncio.Event | None = None

    def ok(self) -> None:
        """A command succeeded: Redis is back; wake the waiting readers."""
        if self.down_since is not None:
            self.down_since = self.failed_at = None
            if self._back is not None:
                self._back.set()
                self._back = None

    def failed(self) -> None:
        """A command failed for a transient reason."""
        now = asyncio.get_running_loop().time()
        self.failed_at = now
        if self.down_since is None:
            self.down_since = now

    def recently_failed(self) -> bool:
        """A command failed less than `PROBE_INTERVAL` seconds ago (and none succeeded)."""
        failed_at = self.failed_at
        if failed_at is None:
            return False
        return asyncio.get_running_loop().time() - failed_at < PROBE_INTERVAL

    def down_for(self) -> float:
        """Seconds Redis has been failing (0 when it answers)."""
        if self.down_since is None:
            return 0.0
        return asyncio.get_running_loop().time() - self.down_since

    async def wait_back(self, timeout: float) -> None:
        """Wait until a command succeeds, at most ``timeout`` seconds."""
        if self.down_since is None or timeout <= 0:
            return
        if self._back is None:
            self._back = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._back.wait(), timeout)


def is_permanent(exc: BaseException) -> bool:
    """Whether Redis refused the command itself (retrying cannot help)."""
    return isinstance(exc, ResponseError) and not isinstance(exc, BusyLoadingError)


def unavailable(exc: BaseException, what: str) -> StoreUnavailableError:
    """Log a transient failure (with the driver's text) and make the public error."""
    logger.warning("run store: %s failed, Redis is unavailable: %s", what, exc)
    return StoreUnavailableError()


def refused(exc: BaseException, what: str) -> StoreError:
    """Log a permanent failure and make the public error (no driver text in it)."""
    logger.error("run store: Redis refused %s: %s", what, exc)
    return StoreError("The run store refused the operation.")


_Method = Callable[_P, Coroutine[Any, Any, _T]]


def translated(what: str) -> Callable[[_Method[_P, _T]], _Method[_P, _T]]:
    """Make an async store method raise `StoreUnavailableError`/`StoreError` only.

    A success or a transient failure is also reported to the store's ``health``.
    """

    def decorate(method: _Method[_P, _T]) -> _Method[_P, _T]:
        @functools.wraps(method)
        async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            health: Health | None = getattr(args[0], "health", None) if args else None
            if health is not None and health.recently_failed():
                raise StoreUnavailableError()  # logged when it failed; no I/O meanwhile
            try:
                result = await method(*args, **kwargs)
            except StoreError:
                raise
            except (RedisError, OSError) as exc:
                if is_permanent(exc):
                    raise refused(exc, what) from None
                if health is not None:
                    health.failed()
                raise unavailable(exc, what) from None
            if health is not None:
                health.ok()
            return result

        return wrapper

    return decorate
