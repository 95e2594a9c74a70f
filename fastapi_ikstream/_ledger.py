"""`UsageLedger`: the usage of one router's runs on this worker, and their delivery.

A run's meter opens when the run starts and counts what this worker's streams send of it.
When the run's task ends, its record waits for the run's streams here to close (they are
still writing its last events), ``STREAM_WAIT`` seconds at most, and is then delivered to
``on_usage``: once claimed in the run store (`RunStore.claim_usage`), so that with a shared
store one worker reports each run. A run ended as ``orphaned`` by this worker's store (its
owner stopped) is reported here with what the store knows: its principal and its start;
the events and bytes its worker sent died with that worker.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from ._exceptions import StoreError
from ._models import RunState
from ._store import RunStore
from .usage import UsageMeter

__all__ = ["STREAM_WAIT", "UsageLedger"]

logger = logging.getLogger("fastapi_ikstream")

STREAM_WAIT = 30.0
"""Seconds a finished run's record waits for its streams to close before it is delivered."""


class UsageLedger:
    """Meters one router's runs and delivers each run's `UsageRecord` once.

    Args:
        label: the router's name (the records' ``router``).
        on_usage: called with each record (awaited if it returns an awaitable).
        store: the run store that claims each record; None delivers without claiming.
    """

    def __init__(self, label: str, on_usage: Callable[[Any], Any], store: RunStore | None) -> None:
        self.label = label
        self.on_usage = on_usage
        self.store = store
        self._meters: dict[str, UsageMeter] = {}
        self._streams: dict[str, int] = {}
        self._ended: dict[str, tuple[RunState | None, datetime, asyncio.TimerHandle]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def started(self, run_id: str, principal: str | None) -> None:
        """A run started here."""
        self._meters[run_id] = UsageMeter(run_id, router=self.label, principal=principal)

    def stream_opened(self, run_id: str) -> None:
        """A stream of ``run_id`` opened here."""
        self._streams[run_id] = self._streams.get(run_id, 0) + 1
        meter = self._meters.get(run_id)
        if meter is not None:
            meter.reader_joined()

    def sent(self, run_id: str, events: int, nbytes: int) -> None:
        """A stream of ``run_id`` wrote ``events`` events in ``nbytes`` bytes."""
        meter = self._meters.get(run_id)
        if meter is not None:
            meter.events_sent += events
            meter.bytes_sent += nbytes

    def stream_closed(self, run_id: str) -> None:
        """A stream of ``run_id`` closed; the run's record goes once its last one has."""
        left = self._streams.get(run_id, 0) - 1
        if left > 0:
            self._streams[run_id] = left
            return
        self._streams.pop(run_id, None)
        if run_id in self._ended:
            self._release(run_id)

    def finished(self, run_id: str, terminal: RunState | None) -> None:
        """The run's task ended with ``terminal``: deliver now, or once its streams close."""
        meter = self._meters.get(run_id)
        if meter is None:
            return
        timer = asyncio.get_running_loop().call_later(STREAM_WAIT, self._release, run_id)
        self._ended[run_id] = (terminal, meter.clock(), timer)
        if not self._streams.get(run_id):
            self._release(run_id)

    def orphaned(self, run_id: str) -> None:
        """The store ended ``run_id`` as ``orphaned``: report it (claimed, so once in all)."""
        meter = self._meters.pop(run_id, None)
        ended = self._ended.pop(run_id, None)
        if ended is not None:
            ended[2].cancel()
        self._spawn(self._deliver(run_id, meter, None, None))

    def _release(self, run_id: str) -> None:
        ended = self._ended.pop(run_id, None)
        meter = self._meters.pop(run_id, None)
        if ended is None or meter is None:
            return
        terminal, ended_at, timer = ended
        timer.cancel()
        self._spawn(self._deliver(run_id, meter, terminal, ended_at))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self,
        run_id: str,
        meter: UsageMeter | None,
        terminal: RunState | None,
        ended_at: datetime | None,
    ) -> None:
        try:
            if meter is None:
                meter = await self._orphan_meter(run_id)
            record = meter.record(terminal, ended_at)
            if not await self._claim(run_id):
                return
            result = self.on_usage(record)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("run %s: on_usage raised", run_id)

    async def _orphan_meter(self, run_id: str) -> UsageMeter:
        info = None
        if self.store is not None:
            try:
                info = await self.store.get_info(run_id)
            except StoreError as exc:
                logger.warning("run %s: its owner is unknown: %s", run_id, exc)
        principal = info.principal if info is not None else None
        created = info.created_at if info is not None else None
        started = datetime.fromtimestamp(created, UTC) if created is not None else None
        return UsageMeter(run_id, router=self.label, principal=principal, started_at=started)

    async def _claim(self, run_id: str) -> bool:
        """True if this worker reports the run (also when the store cannot say: at least once)."""
        if self.store is None:
            return True
        try:
            return await self.store.claim_usage(run_id)
        except StoreError as exc:
            logger.warning("run %s: usage reported unclaimed: %s", run_id, exc)
            return True

    async def drain(self, timeout: float = 5.0) -> None:
        """Deliver the records still waiting for streams, and wait for every delivery."""
        for run_id in list(self._ended):
            self._release(run_id)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
