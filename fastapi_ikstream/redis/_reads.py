"""The reads a Redis store and its subscriptions share: ranges, peeks, orphaning, one ping.

Concurrent identical reads by the local readers of a run are sent once (`RunReads.shared`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from redis.asyncio import Redis

from .._models import EventType, RunError, RunState, RunStatus
from .._redis_faults import Health
from .._store import StoredEvent
from ._records import Meta, Peek, events_of, fields_of
from ._scripts import Scripts

if TYPE_CHECKING:
    from ._reader import SharedReader

__all__ = ["ORPHANED_MESSAGE", "ReadContext", "RunLimits", "RunReads", "run_keys"]

logger = logging.getLogger("fastapi_ikstream")

ORPHANED_MESSAGE = "The worker running this run stopped."
"""The public message of the ``failed`` event (code ``orphaned``) of a run whose owner died."""

_T = TypeVar("_T")


def run_keys(prefix: str, run_id: str) -> list[str]:
    """A run's keys, as the scripts take them: stream, meta, lease, and the active set."""
    p = prefix
    return [f"{p}run:{run_id}", f"{p}meta:{run_id}", f"{p}lease:{run_id}", f"{p}active"]


@dataclass(frozen=True, slots=True)
class RunLimits:
    """What the append script needs to know to write a run: its bounds and lifetimes (ms)."""

    max_events: int
    retention_ms: int
    live_ms: int


class RunReads:
    """Reads of runs in Redis, for the store and its subscriptions.

    Args:
        client: returns the started store's command client.
        scripts: returns its registered scripts.
        prefix: the key prefix.
        limits: the bounds of a run, for the events that end an orphaned run.
        on_orphaned: called with the id of each run that `orphan_now` ended.
    """

    def __init__(
        self,
        client: Callable[[], Redis],
        scripts: Callable[[], Scripts],
        prefix: str,
        limits: RunLimits,
        on_orphaned: Callable[[str], None],
    ) -> None:
        self._client = client
        self._scripts = scripts
        self._prefix = prefix
        self._limits = limits
        self._on_orphaned = on_orphaned
        self._inflight: dict[str, asyncio.Task[Any]] = {}

    async def range(
        self, run_id: str, cursor: int, count: int
    ) -> tuple[Meta | None, list[StoredEvent]]:
        """The run's meta data and up to ``count`` events after ``cursor`` (None: no run)."""
        stream, meta = run_keys(self._prefix, run_id)[:2]
        async with self._client().pipeline(transaction=True) as pipe:
            pipe.hmget(meta, ["first_seq", "last_seq", "finished"])
            pipe.xrange(stream, min=f"{cursor + 1}-0", max="+", count=count)
            values, entries = await pipe.execute()
        if values[1] is None:
            return None, []
        info = Meta(int(values[0] or 1), int(values[1]), values[2] == "1")
        return info, events_of(run_id, entries)

    async def peek_now(self, run_id: str) -> Peek | None:
        """The run's top seq, end and lease, read now (None: no run)."""
        keys = run_keys(self._prefix, run_id)
        async with self._client().pipeline(transaction=True) as pipe:
            pipe.hmget(keys[1], ["finished", "last_seq"])
            pipe.exists(keys[2])
            values, lease = await pipe.execute()
        if values[1] is None:
            return None
        return Peek(int(values[1]), values[0] == "1", bool(lease))

    async def shared(self, key: str, make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """Run ``make()`` once for all the local readers that ask for ``key`` at the same time."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(make())
            self._inflight[key] = task

            def forget(done: asyncio.Task[Any]) -> None:
                if self._inflight.get(key) is done:
                    del self._inflight[key]
                if not done.cancelled():
                    done.exception()  # retrieved here so an unawaited failure is not logged

            task.add_done_callback(forget)
        result: _T = await asyncio.shield(task)
        return result

    async def ping(self) -> None:
        """One PING, shared by the readers that ask at the same time."""
        await self.shared("ping", self._ping)

    async def _ping(self) -> None:
        await self._client().ping()

    async def peek(self, run_id: str) -> Peek | None:
        """`peek_now`, shared by the readers that ask at the same time."""
        return await self.shared(f"peek:{run_id}", lambda: self.peek_now(run_id))

    async def orphan(self, run_id: str) -> bool:
        """`orphan_now`, shared by the readers that ask at the same time."""
        return await self.shared(f"orphan:{run_id}", lambda: self.orphan_now(run_id))

    async def orphan_now(self, run_id: str) -> bool:
        """End an unfinished run whose lease lapsed with ``failed`` (orphaned) and ``done``."""
        peek = await self.peek_now(run_id)
        if peek is None or peek.finished or peek.lease_alive:
            return False
        last = peek.last_seq
        failed = RunState(
            type=EventType.FAILED,
            run_id=run_id,
            seq=last + 1,
            status=RunStatus.FAILED,
            eta=(0, 0),
            error=RunError(code="orphaned", message=ORPHANED_MESSAGE, retryable=True),
        )
        done = RunState(type=EventType.DONE, run_id=run_id, seq=last + 2, status=RunStatus.FAILED)
        limits = self._limits
        args: list[Any] = [run_id, last, limits.max_events, limits.retention_ms, limits.live_ms]
        for state in (failed, done):
            args.extend(fields_of(state))
        keys = run_keys(self._prefix, run_id)
        ended = bool(await self._scripts().orphan(keys=keys, args=args))
        if ended:
            logger.warning("run %s: the worker running it stopped; ended as orphaned", run_id)
            self._on_orphaned(run_id)
        return ended


@dataclass(frozen=True, slots=True)
class ReadContext:
    """What a subscription needs of its store, handed over by the store.

    Attributes:
        reads: the shared reads.
        health: the store's view of Redis' health.
        max_queue: events buffered per local reader.
        idle_check: seconds of quiet before a reader re-checks the run.
        reader: the worker's shared blocking reader, while the store is started.
        ensure_started: starts the store if it is not.
        started: whether the store is started.
        closed: whether the store was closed.
    """

    reads: RunReads
    health: Health
    max_queue: int
    idle_check: float
    reader: Callable[[], SharedReader | None]
    ensure_started: Callable[[], Awaitable[None]]
    started: Callable[[], bool]
    closed: Callable[[], bool]
