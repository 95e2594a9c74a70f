"""Running coroutines that never suspend, without an event loop.

`RunStream` implements the I/O primitives of `StreamCore` with blocking calls, so the shared
loops' coroutines never suspend: `drive` and `drive_iter` run them to their end.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Coroutine, Generator
from typing import Any, TypeVar

__all__ = ["drive", "drive_iter"]

T = TypeVar("T")


def drive(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (all its I/O blocks) to its end; return its value.

    Raises:
        RuntimeError: the coroutine suspended, i.e. it awaited real asynchronous I/O.
    """
    try:
        coroutine.send(None)
    except StopIteration as stop:
        value: T = stop.value
        return value
    coroutine.close()
    raise RuntimeError("a sync stream awaited asynchronous I/O")


def drive_iter(generator: AsyncGenerator[T, None]) -> Generator[T, None, None]:
    """Iterate an async generator that never suspends, as a plain generator."""
    try:
        while True:
            try:
                item = drive(generator.__anext__())
            except StopAsyncIteration:
                return
            yield item
    finally:
        drive(generator.aclose())
