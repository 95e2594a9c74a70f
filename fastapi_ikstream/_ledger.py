"""`UsageLedger`: the usage of one router's runs on this worker, and their delivery.

A run's meter opens when the run starts and counts what this worker's streams send of it.
When the run's task ends, its record waits for the run's streams here to close (they are
still writing its last events), ``STREAM_WAIT`` seconds at most, and is then delivered to
``on_usage``: once claimed in the run store (`RunStore.claim_usage`), so that with a shared
store one worker reports each run.

The deployment's own usage (an update's ``usage``, kept by the run's `RunUsage`) goes into
the record when the run ends. With a shared store it is also kept in the run's meta data
(`RunStore.keep_usage`) as it changes, with the router's and the deployment's names, one
write at a time per run: a run ended as ``orphaned`` by this worker's store (its owner
stopped) is reported here with what the store knows: its principal, start, router,
deployment and usage; the events and bytes its worker sent died with that worker.
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
from ._store import RunInfo, RunStore
from ._updates import RunUsage
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
        self._keeps = store is not None and type(store).keep_usage is not RunStore.keep_usage
        self._keeping: dict[str, bool] = {}  # runs whose usage is being kept: changed since?

    def started(self, run_id: str, principal: str | None, usage: RunUsage | None = None) -> None:
        """A run started here; ``usage`` is its own (its deployment's name, what it reports)."""
        deployment = usage.deployment if usage is not None else None
        self._meters[run_id] = UsageMeter(
            run_id, router=self.label, deployment=deployment, principal=principal
        )
        if self._keeps and usage is not None:
            usage.listener = lambda: self._keep(run_id, usage)
            self._keep(run_id, usage)

    def _keep(self, run_id: str, usage: RunUsage) -> None:
        """Write the run's usage to the store: now, or after the write going on."""
        if run_id in self._keeping:
            self._keeping[run_id] = True
            return
        self._keeping[run_id] = False
        self._spawn(self._write(run_id, usage))

    async def _write(self, run_id: str, usage: RunUsage) -> None:
        assert self.store is not None
        try:
            while True:
                self._keeping[run_id] = False
                await self.store.keep_usage(
                    run_id, router=self.label, deployment=usage.deployment, usage=usage.values
                )
                if not self._keeping[run_id]:
                    return
        except StoreError as exc:
            logger.warning("run %s: its usage could not be kept in the store: %s", run_id, exc)
        finally:
            self._keeping.pop(run_id, None)

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

    def finished(
        self, run_id: str, terminal: RunState | None, usage: RunUsage | None = None
    ) -> None:
        """The run's task ended with ``terminal``: deliver now, or once its streams close."""
        meter = self._meters.get(run_id)
        if meter is None:
            return
        if usage is not None:
            usage.listener = None
            meter.usage = dict(usage.values)
        timer = asyncio.get_running_loop().call_later(STREAM_WAIT, self._release, run_id)
        self._ended[run_id] = (terminal, meter.clock(), timer)
        if not self._streams.get(run_id):
            self._release(run_id)

    def orphaned(self, run_id: str, info: RunInfo | None) -> None:
        """The store ended ``run_id`` as ``orphaned``: report it (claimed, so once in all).

        ``info`` is what the store knows of the run (None if it could not say).
        """
        meter = self._meters.pop(run_id, None)
        ended = self._ended.pop(run_id, None)
        if ended is not None:
            ended[2].cancel()
        self._spawn(self._deliver(run_id, meter or self._orphan_meter(run_id, info), None, None))

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
        meter: UsageMeter,
        terminal: RunState | None,
        ended_at: datetime | None,
    ) -> None:
        try:
            record = meter.record(terminal, ended_at)
            if not await self._claim(run_id):
                return
            result = self.on_usage(record)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("run %s: on_usage raised", run_id)

    def _orphan_meter(self, run_id: str, info: RunInfo | None) -> UsageMeter:
        if info is None:
            return UsageMeter(run_id, router=self.label)
        created = info.created_at
        meter = UsageMeter(
            run_id,
            router=info.router or self.label,
            deployment=info.deployment,
            principal=info.principal,
            started_at=datetime.fromtimestamp(created, UTC) if created is not None else None,
        )
        meter.usage = dict(info.usage or {})
        return meter

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
