"""What a router reports about its runs: usage records (``on_usage``) and metrics.

`RunObserver` is called by the run lifecycle (`RunManager`), the endpoints and the stream
response at the points where something happens: a run starts or ends, a stream opens,
writes or closes, a request is refused. With neither ``on_usage`` nor ``metrics`` given,
the router has no observer and pays nothing.

Usage records are kept and delivered by a `UsageLedger` (``_ledger``): made by the worker
that runs the run, when its task has ended, whatever ended it (its end, a failure, a
cancel, its timeout, shutdown), with the events, bytes and readers this worker served; a
run whose worker stopped is reported by the worker whose store ended it as ``orphaned``.
That worker also counts it among the finished runs (``failed``), under the router named
in the store's meta data if it is kept there; not in the duration histogram (its end is
the sweep's time) nor in the runs in progress (the gauge that counted it died with its
worker).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ._exceptions import StoreError
from ._ledger import UsageLedger
from ._models import EventType, RunState
from ._run import StreamingRun
from ._store import RunInfo, RunStore

__all__ = ["OnUsage", "RunObserver"]

logger = logging.getLogger("fastapi_ikstream")

Sink = Callable[[RunState], None]
"""Where a run's states go (the run store's ``append``)."""

OnUsage = Callable[[Any], Any]
"""Receives each `UsageRecord` (``fastapi_ikstream.usage``); may be ``async``."""

_STATUS = {
    EventType.RESULT: "completed",
    EventType.FAILED: "failed",
    EventType.CANCELLED: "cancelled",
}


class RunObserver:
    """Reports one router's runs to ``on_usage`` and ``metrics``.

    Args:
        label: the router's name (the metrics' ``router`` label, the records' ``router``).
        on_usage: called with each run's `UsageRecord` once the run has ended, or None.
        metrics: a ``fastapi_ikstream.metrics.PrometheusMetrics``, or None.
        store: the run store, to claim each record before it is delivered; None delivers
            without claiming. Default None.
    """

    def __init__(
        self,
        label: str,
        *,
        on_usage: OnUsage | None,
        metrics: Any,
        store: RunStore | None = None,
    ) -> None:
        self.label = label
        self.metrics = metrics
        self.store = store
        self.usage = UsageLedger(label, on_usage, store) if on_usage is not None else None
        self._started: dict[str, float] = {}
        self._orphans: set[asyncio.Task[None]] = set()

    def run_started(self, run: StreamingRun, owner: str | None, sink: Sink) -> Sink:
        """A run was created; returns the sink to start its task with.

        With metrics, the sink is wrapped to time the run's first update (its first state
        after ``run``): one more call per event, for metered routers only.
        """
        run_id = run.run_id
        started = self._started[run_id] = time.monotonic()
        if self.usage is not None:
            self.usage.started(run_id, owner, run.usage)
        metrics = self.metrics
        if metrics is None:
            return sink
        metrics.run_started(self.label, run_id)
        label = self.label
        waiting = True

        def timed(state: RunState) -> None:
            nonlocal waiting
            if waiting and state.seq > 1:
                waiting = False
                metrics.first_event(label, time.monotonic() - started)
            sink(state)

        return timed

    def run_finished(self, run: StreamingRun) -> None:
        """A run's task ended: count it, and deliver its usage record."""
        run_id = run.run_id
        started = self._started.pop(run_id, None)
        terminal = run.terminal_state
        if self.metrics is not None and started is not None:
            status = _STATUS.get(terminal.type, "failed") if terminal is not None else "failed"
            code = terminal.error.code if terminal is not None and terminal.error else None
            seconds = time.monotonic() - started
            self.metrics.run_finished(self.label, status, seconds, run_id, code)
        if self.usage is not None:
            self.usage.finished(run_id, terminal, run.usage)

    def run_orphaned(self, run_id: str) -> None:
        """The store ended ``run_id`` as ``orphaned`` (its worker stopped): count and report it."""
        task = asyncio.get_running_loop().create_task(self._orphaned(run_id))
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    async def _orphaned(self, run_id: str) -> None:
        info = await self._info(run_id)
        if self.metrics is not None:
            router = info.router if info is not None and info.router else self.label
            self.metrics.run_orphaned(router)
        if self.usage is not None:
            self.usage.orphaned(run_id, info)

    async def _info(self, run_id: str) -> RunInfo | None:
        if self.store is None:
            return None
        try:
            return await self.store.get_info(run_id)
        except StoreError as exc:
            logger.warning("run %s: the store cannot say whose it was: %s", run_id, exc)
            return None

    async def drain(self) -> None:
        """Deliver the usage records still waiting, and wait for them (at shutdown)."""
        if self._orphans:
            await asyncio.wait(set(self._orphans), timeout=5.0)
        if self.usage is not None:
            await self.usage.drain()

    def stream_opened(self, run_id: str, *, resumed: bool) -> None:
        """A reader's stream opened."""
        if self.usage is not None:
            self.usage.stream_opened(run_id)
        if self.metrics is not None:
            self.metrics.stream_opened(self.label)
            if resumed:
                self.metrics.resumed(self.label)

    def stream_closed(self, run_id: str) -> None:
        """A reader's stream of ``run_id`` closed."""
        if self.usage is not None:
            self.usage.stream_closed(run_id)
        if self.metrics is not None:
            self.metrics.stream_closed(self.label)

    def sent(self, run_id: str, events: int, nbytes: int) -> None:
        """``events`` events in ``nbytes`` bytes were written to one reader of ``run_id``."""
        if self.usage is not None:
            self.usage.sent(run_id, events, nbytes)
        if self.metrics is None:
            return
        self.metrics.event_sent(self.label, nbytes, events)

    def rejected(self, status_code: int, reason: str) -> None:
        """A request was refused before any stream."""
        if self.metrics is not None:
            self.metrics.rejected(self.label, status_code, reason)
            if reason == "store_unavailable":
                self.metrics.store_error(self.label)

    def store_failed(self) -> None:
        """A run store operation failed outside a request (counting readers, a cancel)."""
        if self.metrics is not None:
            self.metrics.store_error(self.label)
