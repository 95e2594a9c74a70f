"""`RedisRunSubscription`: one reader of one run, from a cursor on."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from redis.exceptions import RedisError

from .._cursor import MAX_SEQ
from .._exceptions import StoreUnavailableError
from .._models import EventType
from .._redis_faults import UNAVAILABLE_AFTER, is_permanent, refused, unavailable
from .._store import StoredEvent, Subscription, reset_event
from ._reads import ReadContext
from ._records import expire

__all__ = ["RedisRunSubscription"]

logger = logging.getLogger("fastapi_ikstream")

_CATCH_UP_COUNT = 64  # entries per XRANGE of one reader catching up
_BATCH_BYTES = 64 * 1024  # bytes of event data one reader's batch holds at most


class RedisRunSubscription(Subscription):
    """A reader of one run in a `RedisRunStore`, from a cursor on.

    It first reads what it lacks with ``XRANGE`` (a ``reset`` first when its cursor is older
    than the kept window), then joins the worker's shared blocking reader. When its queue
    overflows, or an event arrives out of order, it reads from its own cursor again. When
    nothing comes for a while it re-checks the run's meta data, so a lost notification or a
    dead owner cannot leave it waiting.
    """

    __slots__ = (
        "_closed",
        "_context",
        "_ended",
        "_queue",
        "_waiter",
        "cursor",
        "need_range",
        "registered",
        "run_id",
    )

    def __init__(self, context: ReadContext, run_id: str, after_seq: int) -> None:
        self._context = context
        self.run_id = run_id
        self.cursor = min(max(0, after_seq), MAX_SEQ)
        self._queue: deque[StoredEvent] = deque()
        self.need_range = True
        self.registered = False
        self._ended = False
        self._closed = False
        self._waiter: asyncio.Future[bool] | None = None

    def push(self, events: list[StoredEvent]) -> None:
        """Take events from the shared reader (drops them all and reads alone on overflow)."""
        queue = self._queue
        if len(queue) + len(events) > self._context.max_queue:
            queue.clear()
            self.need_range = True
        else:
            queue.extend(events)
        self.wake(True)

    def wake(self, value: bool) -> None:
        """End a pending wait."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(value)

    def _take_queue(self) -> list[StoredEvent]:
        out: list[StoredEvent] = []
        queue = self._queue
        cursor = self.cursor
        while queue:
            event = queue.popleft()
            if event.seq <= cursor:
                continue
            if event.seq != cursor + 1:  # a gap: read it from Redis
                queue.clear()
                self.need_range = True
                break
            out.append(event)
            cursor = event.seq
            if event.type == EventType.DONE.value:
                queue.clear()
                break
        self.cursor = cursor
        return out

    async def _read_range(self) -> list[StoredEvent] | None:
        context = self._context
        meta, events = await context.reads.range(self.run_id, self.cursor, _CATCH_UP_COUNT)
        context.health.ok()
        if meta is None:
            return None
        out: list[StoredEvent] = []
        if self.cursor > meta.last_seq:  # past the end: start again from what is kept
            reset = reset_event(self.run_id, meta.first_seq)
            out.append(reset)
            self.cursor = reset.seq
            meta, events = await context.reads.range(self.run_id, self.cursor, _CATCH_UP_COUNT)
            if meta is None:
                return None
        cursor = self.cursor
        first = events[0].seq if events else meta.first_seq
        if first > cursor + 1 and (events or meta.last_seq > cursor):
            reset = reset_event(self.run_id, first)
            out.append(reset)
            cursor = reset.seq
        done = False
        size = 0
        cut = False
        for event in events:
            if event.seq <= cursor:
                continue
            if size >= _BATCH_BYTES:
                cut = True  # the rest is read again once this batch is written
                break
            size += len(event.data)
            out.append(event)
            cursor = event.seq
            if event.type == EventType.DONE.value:
                done = True
                break
        self.cursor = cursor
        self.need_range = (cut or len(events) >= _CATCH_UP_COUNT) and not done
        if not out and meta.finished and cursor >= meta.last_seq:
            return None
        reader = context.reader()
        if not done and not self.need_range and not self.registered and reader is not None:
            reader.register(self)
        return out

    async def _wait(self, seconds: float) -> bool:
        if self._queue or self.need_range:
            return True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiter = fut
        handle = loop.call_later(seconds, expire, fut)
        try:
            return await fut
        finally:
            handle.cancel()
            self._waiter = None

    def _end(self) -> None:
        self._ended = True
        reader = self._context.reader()
        if self.registered and reader is not None:
            reader.unregister(self)

    async def _collect(self) -> list[StoredEvent] | None:
        batch = self._take_queue()
        if batch or not self.need_range:
            return batch
        return await self._read_range()

    async def _check(self) -> bool | None:
        """Re-check the meta hash after a quiet wait: None if the run ended or is gone."""
        context = self._context
        peek = await context.reads.peek(self.run_id)
        context.health.ok()
        if peek is None or (peek.finished and peek.last_seq <= self.cursor):
            return None
        if peek.last_seq > self.cursor:  # a notification was lost or is late: read
            self.need_range = True
            return True
        if not peek.lease_alive and await context.reads.orphan(self.run_id):
            self.need_range = True
            return True
        return False

    async def next_batch(self, timeout: float | None) -> list[StoredEvent] | None:
        """See `Subscription.next_batch`; None also when the run is unknown or expired."""
        context = self._context
        if self._ended or self._closed or context.closed():
            return None
        await context.ensure_started()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + max(0.0, timeout)
        while context.started() and not self._closed:
            try:
                if context.health.down_since is not None:
                    if not await self._ride_out(deadline):
                        return []  # a keep-alive while Redis is away
                    continue
                batch = await self._collect()
                if batch is None:
                    break
                if batch:
                    if batch[-1].type == EventType.DONE.value:
                        self._end()
                    return batch
                more = await self._idle(deadline)
                if more is None:
                    break
                if more:
                    continue
            except (RedisError, OSError) as exc:
                self._read_failed(exc)  # the loop rides the outage out, or ends the stream
            if deadline is not None and loop.time() >= deadline:
                return []
        self._end()
        return None

    async def _idle(self, deadline: float | None) -> bool | None:
        """Nothing new: wait for a wake-up, then check the run.

        Returns:
            True when there may be more to read now; False when nothing came; None when the
            stream is over (closed, the store stopped, or the run is gone).
        """
        context = self._context
        wait = context.idle_check
        if deadline is not None:
            wait = min(wait, deadline - asyncio.get_running_loop().time())
        if wait > 0 and await self._wait(wait):
            return True
        if self._closed or not context.started():
            return None
        return await self._check()

    def _read_failed(self, exc: RedisError | OSError) -> None:
        """A read failed: stop on a cancellation, end on a permanent error, else count it."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # redis-py may turn a cancellation into a connection error: the stream was
            # stopped (a shutdown, a disconnect), so stop, do not retry
            raise asyncio.CancelledError from exc
        if is_permanent(exc):
            self._end()
            raise refused(exc, f"reading run {self.run_id}") from None
        logger.info("run %s: reading it from Redis failed: %s", self.run_id, exc)
        self._context.health.failed()

    async def _ride_out(self, deadline: float | None) -> bool:
        """Wait while Redis fails; end the stream after `UNAVAILABLE_AFTER` seconds of it.

        Readers do not probe Redis here: the shared reader does, and one PING shared by
        all of them confirms the outage before their streams end.

        Returns:
            True once Redis answers again (the reader then reads from its cursor); False
            if ``deadline`` came first.

        Raises:
            StoreUnavailableError: Redis has been failing for too long.
        """
        context = self._context
        health = context.health
        loop = asyncio.get_running_loop()
        while health.down_since is not None and not self._closed:
            wait = UNAVAILABLE_AFTER - health.down_for()
            if wait <= 0:
                if health.recently_failed():  # confirmed already: no probe of our own
                    self._end()
                    raise StoreUnavailableError()
                try:
                    await context.reads.ping()
                except (RedisError, OSError) as exc:
                    health.failed()
                    self._end()
                    raise unavailable(exc, f"reading run {self.run_id}") from None
                health.ok()
                break
            if deadline is not None:
                if loop.time() >= deadline:
                    return False
                wait = min(wait, deadline - loop.time())
            await health.wait_back(wait)
        self.need_range = True
        return True

    async def aclose(self) -> None:
        """Leave the shared reader."""
        self._closed = True
        self._end()
        self.wake(False)
