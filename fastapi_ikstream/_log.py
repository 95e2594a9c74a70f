"""An in-memory, bounded event log for one run, read by any number of cursors.

Every event is appended with its ``seq`` (1, 2, 3 …). Readers ask for what follows their
cursor and wait for more. When the log holds more than ``max_events``, the oldest are
dropped; a reader whose cursor falls before the kept window is told so explicitly (a
``reset``), never skipped silently. A log may also be bounded in bytes: the oldest events
go first, the latest one always stays.

A log may compact superseded events: an event appended as ``supersedable`` (the memory
store marks so a ``progress`` state without log lines or partial output) is superseded by
the next such event, and once it is more than ``live_events`` events old it is removed.
A reader skips what was removed: it gets every event that was not superseded, once, and
always the latest supersedable one. So a run that only reports progress holds at most
about ``3 * live_events`` events however long it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from bisect import bisect_right
from typing import Generic, TypeVar

__all__ = ["RunLog"]


T = TypeVar("T")

BUSY_WITHIN = 0.05
"""A log is busy when its readers were last woken less than this many seconds ago."""

COALESCE_TURNS = 8
"""A busy log wakes its readers at most this many loop turns after an append."""


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
        live_events: superseded events younger than this many events are kept; older ones
            are removed (see the module docstring). None compacts nothing. Default None.
    """

    __slots__ = (
        "_events",
        "_latest_super",
        "_seqs",
        "_sizes",
        "_stale",
        "_waiters",
        "_wake_handle",
        "_wake_seq",
        "_wake_turns",
        "_woken_at",
        "finished",
        "first_seq",
        "last_seq",
        "live_events",
        "max_bytes",
        "max_events",
        "nbytes",
    )

    def __init__(
        self,
        max_events: int = 10_000,
        max_bytes: int | None = None,
        live_events: int | None = None,
    ) -> None:
        self.max_events = max(1, max_events)
        self.max_bytes = max_bytes
        self.live_events = None if live_events is None else max(1, live_events)
        self._events: list[T] = []
        self._seqs: list[int] = []
        self._sizes: list[int] = []
        self._stale: list[int] = []  # seqs of superseded events still held
        self._latest_super = 0  # seq of the latest supersedable event (0: none)
        self._waiters: list[asyncio.Future[None]] = []
        self._wake_handle: asyncio.Handle | None = None  # a deferred wake-up, pending
        self._wake_turns = 0
        self._wake_seq = 0
        self._woken_at = float("-inf")
        self.first_seq = 1
        self.last_seq = 0
        self.finished = False
        self.nbytes = 0

    def append(
        self, item: T, seq: int, kind: str, size: int = 0, supersedable: bool = False
    ) -> None:
        """Add the next event.

        Args:
            item: what to keep.
            seq: its seq, which must be ``last_seq + 1``.
            kind: its event kind; ``"done"`` ends the log.
            size: its size in bytes, counted against ``max_bytes``. Default 0.
            supersedable: the next supersedable event makes this one obsolete (it may then
                be removed, see ``live_events``). Default False.

        Raises:
            ValueError: the seq is out of order, or the log already ended with ``done``.
        """
        if self.finished:
            raise ValueError("the run's log already ended with 'done'")
        if seq != self.last_seq + 1:
            raise ValueError(f"seq {seq} does not follow {self.last_seq}")
        events = self._events
        events.append(item)
        self._seqs.append(seq)
        self.last_seq = seq
        if kind == "done":
            self.finished = True
        if self.max_bytes is not None:
            self._sizes.append(size)
            self.nbytes += size
            if self.nbytes > self.max_bytes:
                self._trim_bytes(self.max_bytes)
        if supersedable and self.live_events is not None:
            if self._latest_super:
                self._stale.append(self._latest_super)
                if len(self._stale) >= 2 * self.live_events:
                    self._compact(seq - self.live_events)
            self._latest_super = seq
        if len(events) > self.max_events + (self.max_events >> 2):
            self._drop(len(events) - self.max_events)
        self._wake()

    def _compact(self, before: int) -> None:
        """Remove the superseded events whose seq is at most ``before``, in one pass."""
        stale = self._stale
        cut = bisect_right(stale, before)
        gone = set(stale[:cut])
        del stale[:cut]
        if not gone:
            return
        keep = [index for index, seq in enumerate(self._seqs) if seq not in gone]
        self._events = [self._events[index] for index in keep]
        self._seqs = [self._seqs[index] for index in keep]
        if self.max_bytes is not None:
            sizes = self._sizes
            self._sizes = [sizes[index] for index in keep]
            self.nbytes = sum(self._sizes)

    def _drop(self, count: int) -> None:
        del self._events[:count]
        del self._seqs[:count]
        if self.max_bytes is not None:
            self.nbytes -= sum(self._sizes[:count])
            del self._sizes[:count]
        self.first_seq = self._seqs[0] if self._seqs else self.last_seq + 1
        if self._stale:
            del self._stale[: bisect_right(self._stale, self.first_seq - 1)]

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
        entries = self.entries_after(cursor, limit)
        return None if entries is None else entries[1]

    def entries_after(
        self, cursor: int, limit: int | None = None
    ) -> tuple[list[int], list[T]] | None:
        """Like `read_after`, with the events' seqs: ``(seqs, events)``.

        Seqs may have gaps where superseded events were compacted.
        """
        if cursor >= self.last_seq:
            return [], []
        if cursor + 1 < self.first_seq:
            return None
        seqs = self._seqs
        start = cursor + 1 - self.first_seq
        if start >= len(seqs) or seqs[start] != cursor + 1:  # compacted: find the position
            start = bisect_right(seqs, cursor)
        end = len(seqs) if limit is None else start + limit
        return seqs[start:end], self._events[start:end]

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
        """Wake the waiting readers: at once, or, when the log is busy, a few turns later.

        A source that reports each update on its own loop turn would wake every reader
        once per event, and every write would carry one event. So a busy log (its readers
        were woken less than `BUSY_WITHIN` seconds ago) defers the wake-up by one loop turn
        at a time while events keep arriving, `COALESCE_TURNS` turns at most: its readers
        then take the events of those turns with one wake-up and one write. A log whose
        events are further apart wakes its readers at once.
        """
        waiters = self._waiters
        if not waiters or self._wake_handle is not None:
            return
        loop = waiters[0].get_loop()
        now = loop.time()
        if self.finished or now - self._woken_at >= BUSY_WITHIN:
            self._resolve(now)
            return
        self._wake_turns = 0
        self._wake_seq = self.last_seq
        self._wake_handle = loop.call_soon(self._deferred_wake, loop)

    def _deferred_wake(self, loop: asyncio.AbstractEventLoop) -> None:
        turns = self._wake_turns = self._wake_turns + 1
        # The first turn always waits: a source that appended and then yielded runs after
        # this callback, in the same turn; the next checks see what it added meanwhile.
        if (
            self._waiters
            and not self.finished
            and turns <= COALESCE_TURNS
            and (turns == 1 or self.last_seq != self._wake_seq)
        ):
            self._wake_seq = self.last_seq
            self._wake_handle = loop.call_soon(self._deferred_wake, loop)
            return
        self._wake_handle = None
        self._resolve(loop.time())

    def _resolve(self, now: float) -> None:
        self._woken_at = now
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
