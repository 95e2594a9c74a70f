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

import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from redis.exceptions import BusyLoadingError, RedisError, ResponseError

from ._exceptions import StoreError, StoreUnavailableError

__all__ = ["UNAVAILABLE_AFTER", "is_permanent", "refused", "translated", "unavailable"]

logger = logging.getLogger("fastapi_ikstream")

UNAVAILABLE_AFTER = 2.0
"""Seconds an open stream keeps retrying a failing Redis before it ends (see
``docs/concepts/security.md``): short outages are ridden out, long ones end the stream
with a ``retry:`` hint well within 5 s."""

_P = ParamSpec("_P")
_T = TypeVar("_T")


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
    """Make an async store method raise `StoreUnavailableError`/`StoreError` only."""

    def decorate(method: _Method[_P, _T]) -> _Method[_P, _T]:
        @functools.wraps(method)
        async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            try:
                return await method(*args, **kwargs)
            except StoreError:
                raise
            except (RedisError, OSError) as exc:
                if is_permanent(exc):
                    raise refused(exc, what) from None
                raise unavailable(exc, what) from None

        return wrapper

    return decorate
