"""What a router reports about its runs: usage records (``on_usage``) and metrics.

`RunObserver` is called by the run lifecycle (`RunManager`), the endpoints and the stream
response at the points where something happens: a run starts or ends, a stream opens,
writes or closes, a request is refused. With neither ``on_usage`` nor ``metrics`` given,
the router has no observer and pays nothing.

Usage records are made by the worker that runs the run, once, when its task has ended,
whatever ended it (its end, a failure, a cancel, its timeout, shutdown); events, bytes and
readers are those this worker served.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from ._models import EventType
from ._run import StreamingRun

__all__ = ["OnUsage", "RunObserver"]

logger = logging.getLogger("fastapi_ikstream")

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
    """

    def __init__(self, label: str, *, on_usage: OnUsage | None, metrics: Any) -> None:
        self.label = label
        self.on_usage = on_usage
        self.metrics = metrics
        self._meters: dict[str, Any] = {}
        self._started: dict[str, float] = {}
        self._first: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def run_started(self, run: StreamingRun, owner: str | None) -> None:
        """A run was created and its task started."""
        run_id = run.run_id
        self._started[run_id] = time.monotonic()
        if self.on_usage is not None:
            from .usage import UsageMeter

            self._meters[run_id] = UsageMeter(run_id, router=self.label, principal=owner)
        if self.metrics is not None:
            self.metrics.run_started(self.label, run_id)

    def run_finished(self, run: StreamingRun) -> None:
        """A run's task ended: count it, and deliver its usage record."""
        run_id = run.run_id
        started = self._started.pop(run_id, None)
        self._first.discard(run_id)
        terminal = run.terminal_state
        if self.metrics is not None and started is not None:
            status = _STATUS.get(terminal.type, "failed") if terminal is not None else "failed"
            code = terminal.error.code if terminal is not None and terminal.error else None
            seconds = time.monotonic() - started
            self.metrics.run_finished(self.label, status, seconds, run_id, code)
        meter = self._meters.pop(run_id, None)
        if meter is not None and self.on_usage is not None:
            task = asyncio.get_running_loop().create_task(self._deliver(meter.record(terminal)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, record: Any) -> None:
        assert self.on_usage is not None
        try:
            result = self.on_usage(record)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("run %s: on_usage raised", record.run_id)

    async def drain(self) -> None:
        """Wait for the usage records still being delivered (at shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)

    def stream_opened(self, run_id: str, *, resumed: bool) -> None:
        """A reader's stream opened."""
        meter = self._meters.get(run_id)
        if meter is not None:
            meter.reader_joined()
        if self.metrics is not None:
            self.metrics.stream_opened(self.label)
            if resumed:
                self.metrics.resumed(self.label)

    def stream_closed(self) -> None:
        """A reader's stream closed."""
        if self.metrics is not None:
            self.metrics.stream_closed(self.label)

    def sent(self, run_id: str, events: int, nbytes: int) -> None:
        """``events`` events in ``nbytes`` bytes were written to one reader of ``run_id``."""
        meter = self._meters.get(run_id)
        if meter is not None:
            meter.events_sent += events
            meter.bytes_sent += nbytes
        if self.metrics is None:
            return
        self.metrics.event_sent(self.label, nbytes)
        for _ in range(events - 1):
            self.metrics.event_sent(self.label, 0)
        if run_id not in self._first and run_id in self._started:
            self._first.add(run_id)
            self.metrics.first_event(self.label, time.monotonic() - self._started[run_id])

    def rejected(self, status_code: int, reason: str) -> None:
        """A request was refused before any stream."""
        if self.metrics is not None:
            self.metrics.rejected(self.label, status_code, reason)
