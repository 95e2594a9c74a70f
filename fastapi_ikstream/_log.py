"""An in-memory, bounded event log for one run, read by any number of cursors.

Every event is appended with its ``seq`` (1, 2, 3 …). Readers ask for what follows their
cursor and wait for more. When the log holds more than ``max_events``, the oldest are
dropped; a reader whose cursor falls before the kept window is told so explicitly (a
``reset``), never skipped silently. A log may also be bounded in bytes: the oldest events
go first, the latest one always stays.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Generic, TypeVar

__all__ = ["RunLog"]


T = TypeVar("T")


class RunLog(Generic[T]):
    """A bounded append-only log of one run's events.

    Items are anything; their seq and kind are given on `append`. The memory store keeps
    each event's JSON text only: strings are not tracked by Python's cyclic garbage
    collector, so a store full of retained events adds nothing to its full collections.

    Args:
        max_events: events kept at least; older ones are dropped in chunks (up to a quarter
            more may be held between trims). Default 10,000.
        max_bytes: bytes kept at most (the sizes given to `append`); the last two events
            (a run's terminal state and ``done``) always stay. None for no bound. Default None.
    """

    __slots__ = (
        "_events",
        "_sizes",
        "_waiters",
        "finished",
        "first_seq",
        "last_seq",
        "max_bytes",
        "max_events",
        "nbytes",
    )

    def __init__(self, max_events: int = 10_000, max_bytes: int | None = None) -> None:
        self.max_events = max(1, max_events)
        self.max_bytes = max_bytes
        self._events: list[T] = []
        self._sizes: list[int] = []
        self._waiters: list[asyncio.Future[None]] = []
        self.first_seq = 1
        self.last_seq = 0
        self.finished = False
        self.nbytes = 0

    def append(self, item: T, seq: int, kind: str, size: int = 0) -> None:
        """Add the next event.

        Args:
            item: what to keep.
            seq: its seq, which must be ``last_seq + 1``.
            kind: its event kind; ``"done"`` ends the log.
            size: its size in bytes, counted against ``max_bytes``. Default 0.

        Raises:
            ValueError: the seq is out of order, or the log already ended with ``done``.
        """
        if self.finished:
            raise ValueError("the run's log already ended with 'done'")
        if seq != self.last_seq + 1:
            raise ValueError(f"seq {seq} does not follow {self.last_seq}")
        events = self._events
        events.append(item)
        self.last_seq = seq
        if kind == "done":
            self.finished = True
        if self.max_bytes is not None:
            self._sizes.append(size)
            self.nbytes += size
            if self.nbytes > self.max_bytes:
                self._trim_bytes(self.max_bytes)
        if len(events) > self.max_events + (self.max_events >> 2):
            self._drop(len(events) - self.max_events)
        self._wake()

    def _drop(self, count: int) -> None:
        del self._events[:count]
        if self.max_bytes is not None:
            self.nbytes -= sum(self._sizes[:count])
            del self._sizes[:count]
        self.first_seq += count

    def _trim_bytes(self, limit: int) -> None:
        """Drop the oldest events until at most three quarters of ``limit`` are held."""
        target = limit - (limit >> 2)
        held = self.nbytes
        count = 0
        sizes = self._sizes
        while held > target and count < len(sizes) - 2:  # the end stays: terminal, done
            held -= sizes[count]
            count += 1
        if count:
            self._drop(count)

    def latest(self) -> T | None:
        """The last event appended, or None."""
        return self._events[-1] if self._events else None

    def read_after(self, cursor: int, limit: int | None = None) -> list[T] | None:
        """Events after ``cursor`` (a seq), in order; ``[]`` if none yet.

        Args:
            cursor: the last seq the reader has.
            limit: events returned at most; None for all.

        Returns:
            The events, or None when ``cursor`` is older than the kept window (the reader
            must reset to ``first_seq - 1``).
        """
        if cursor >= self.last_seq:
            return []
        if cursor + 1 < self.first_seq:
            return None
        start = cursor + 1 - self.first_seq
        if limit is not None:
            return self._events[start : start + limit]
        return self._events[start:] if start else self._events[:]

    async def wait(self, cursor: int, timeout: float | None) -> bool:
        """Wait until an event after ``cursor`` exists or the log ends.

        Args:
            cursor: the last seq the reader has.
            timeout: seconds to wait at most; None waits without limit.

        Returns:
            True if something new is there, False on timeout.
        """
        if cursor < self.last_seq or self.finished:
            return True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append(fut)
        handle = None if timeout is None else loop.call_later(timeout, _expire, fut)
        try:
            await fut
        finally:
            if handle is not None:
                handle.cancel()
            if not fut.done():
                fut.cancel()
            if self._waiters:
                self._discard(fut)
        return cursor < self.last_seq or self.finished

    def add_waiter(self) -> asyncio.Future[None]:
        """A future resolved at the next append (or end); pass it to `remove_waiter` after."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return fut

    def remove_waiter(self, fut: asyncio.Future[None]) -> None:
        """Forget a future from `add_waiter` that the log has not resolved."""
        if self._waiters:
            self._discard(fut)

    def _discard(self, fut: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(fut)

    def _wake(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
