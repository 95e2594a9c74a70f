"""`MemoryRunStore`: runs kept in this process, bounded in runs, events, bytes and time."""

from __future__ import annotations

import asyncio
import time

from ._exceptions import QuotaExceededError, RunNotFoundError, StoreError
from ._log import RunLog
from ._models import EventType, RunState, RunStatus
from ._store import (
    CancelHandler,
    RunInfo,
    RunStore,
    StoredEvent,
    Subscription,
    kind_of,
    reset_event,
)

__all__ = ["MemoryRunStore", "MemoryRunSubscription"]

BATCH_EVENTS = 256
"""Events one `next_batch` returns at most."""

BATCH_BYTES = 64 * 1024
"""Bytes of event data one `next_batch` returns at most (at least one event)."""


class _MemoryRun:
    __slots__ = (
        "attached",
        "cancel_requested",
        "finished_at",
        "log",
        "principal",
        "quota_key",
        "status",
        "usage_claimed",
        "watchers",
    )

    def __init__(
        self,
        principal: str | None,
        log: RunLog[str],
        quota_key: str | None = None,
        attached: bool = False,
    ) -> None:
        self.log = log
        self.principal = principal
        self.quota_key = quota_key
        self.attached = attached
        self.status = RunStatus.RECEIVED
        self.finished_at: float | None = None
        self.watchers = 0
        self.cancel_requested = False
        self.usage_claimed = False


class MemoryRunSubscription(Subscription):
    """Reads a run's `RunLog` from a cursor.

    Keep-alive timing costs one timer per silence, not one per event: the deadline moves
    with every batch returned, and a single timer, armed while waiting, re-arms itself at
    the moved deadline when it fires early.
    """

    __slots__ = ("_deadline", "_ended", "_log", "_run_id", "_timer", "_waiter", "cursor")

    def __init__(self, run_id: str, log: RunLog[str], after_seq: int) -> None:
        self._run_id = run_id
        self._log = log
        self.cursor = after_seq
        self._ended = False
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None

    def _take(self) -> list[StoredEvent] | None:
        log = self._log
        run_id = self._run_id
        head: list[StoredEvent] = []
        if self.cursor > log.last_seq:  # past the end: start again from what is kept
            head.append(reset_event(run_id, log.first_seq))
            self.cursor = log.first_seq - 1
        entries = log.entries_after(self.cursor, BATCH_EVENTS)
        if entries is None:
            head.append(reset_event(run_id, log.first_seq))
            self.cursor = log.first_seq - 1
            entries = log.entries_after(self.cursor, BATCH_EVENTS) or ([], [])
        size = 0
        batch = head
        for seq, text in zip(*entries, strict=True):
            if size >= BATCH_BYTES:
                break  # the rest comes with the next batch, once this one is written
            size += len(text)
            batch.append(StoredEvent(run_id, seq, kind_of(text), text))
        if batch:
            self.cursor = batch[-1].seq
            if batch[-1].type == "done":
                self._ended = True
        return batch

    async def next_batch(self, timeout: float | None) -> list[StoredEvent] | None:  # noqa: C901 - one read loop, its cases commented
        """See `Subscription.next_batch`."""
        if self._ended:
            return None
        loop = asyncio.get_running_loop()
        batch = self._take()
        if batch:
            if timeout is not None:
                self._deadline = loop.time() + timeout
            return batch
        log = self._log
        while True:
            if log.finished:
                self._ended = True
                return None
            if timeout is not None:
                now = loop.time()
                if self._deadline is None:
                    self._deadline = now + timeout
                elif now >= self._deadline:
                    self._deadline = now + timeout
                    return []
                if self._timer is None:
                    self._timer = loop.call_at(self._deadline, self._on_timer)
            waiter = self._waiter = log.add_waiter()
            try:
                await waiter
            finally:
                self._waiter = None
                if not waiter.done():
                    waiter.cancel()
                log.remove_waiter(waiter)
            batch = self._take()
            deadline = self._deadline
            if batch or (deadline is not None and loop.time() >= deadline - 0.001):
                break
            # Nothing new for this reader: the log's wake-up was deferred from before it
            # began to wait (see `RunLog._wake`). Wait again, as if it had not happened.
        if timeout is not None:
            self._deadline = loop.time() + timeout
        return batch

    def _on_timer(self) -> None:
        self._timer = None
        waiter, deadline = self._waiter, self._deadline
        if waiter is None or waiter.done() or deadline is None:
            return
        loop = waiter.get_loop()
        if loop.time() >= deadline - 0.001:
            waiter.set_result(None)
        else:
            self._timer = loop.call_at(deadline, self._on_timer)

    async def aclose(self) -> None:
        """See `Subscription.aclose`."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class MemoryRunStore(RunStore):
    """Keeps runs in this process (the default). Bounded in runs, events, bytes and time.

    Args:
        max_runs: runs kept at most; when full, the oldest finished run is evicted, and a new
            run is refused (`StoreError`, answered 503) if all of them are still running.
            Default 10,000.
        max_events_per_run: events kept per run at least; older ones are dropped and a reader
            that asks for them gets a ``reset``. Default 10,000.
        max_bytes_per_run: bytes of event JSON kept per run at most; the oldest events are
            dropped first (a reader that asks for them gets a ``reset``), a run's terminal
            state and ``done`` always stay. Default 16 MiB.
        retention: seconds a finished run stays readable. Default 300.0.
        live_progress: a ``progress`` state without log lines or partial output is
            superseded by the next such state; once it is more than this many events old it
            is removed from the run's log (a reader skips it and still gets the latest one),
            so a run that only reports progress holds at most about three times this many
            events, however long it runs. None keeps every event. Default 256.
    """

    def __init__(
        self,
        *,
        max_runs: int = 10_000,
        max_events_per_run: int = 10_000,
        max_bytes_per_run: int = 16 * 1024 * 1024,
        retention: float = 300.0,
        live_progress: int | None = 256,
    ) -> None:
        self.max_runs = max_runs
        self.live_progress = live_progress
        self.max_events_per_run = max_events_per_run
        self.max_bytes_per_run = max_bytes_per_run
        self.retention = retention
        self._runs: dict[str, _MemoryRun] = {}
        self._active: dict[str, set[str]] = {}
        self._cancel_handler: CancelHandler | None = None

    def _purge(self) -> None:
        now = time.monotonic()
        expired = [
            run_id
            for run_id, run in self._runs.items()
            if run.finished_at is not None and now - run.finished_at > self.retention
        ]
        for run_id in expired:
            del self._runs[run_id]

    def _get(self, run_id: str) -> _MemoryRun | None:
        run = self._runs.get(run_id)
        if (
            run is not None
            and run.finished_at is not None
            and time.monotonic() - run.finished_at > self.retention
        ):
            del self._runs[run_id]
            return None
        return run

    async def create_run(
        self,
        run_id: str,
        *,
        principal: str | None,
        quota_key: str | None = None,
        max_active: int | None = None,
        attached: bool = False,
    ) -> None:
        """See `RunStore.create_run`."""
        if run_id in self._runs:
            raise StoreError(f"run {run_id} exists already")
        active = self._active.get(quota_key) if quota_key is not None else None
        if max_active is not None and active is not None and len(active) >= max_active:
            raise QuotaExceededError(max_active)
        if len(self._runs) >= self.max_runs:
            self._purge()
        if len(self._runs) >= self.max_runs:
            finished = [(r.finished_at, k) for k, r in self._runs.items() if r.finished_at]
            if not finished:
                raise StoreError("too many runs in progress")
            del self._runs[min(finished)[1]]
        log: RunLog[str] = RunLog(
            self.max_events_per_run, self.max_bytes_per_run, self.live_progress
        )
        self._runs[run_id] = _MemoryRun(principal, log, quota_key, attached)
        if quota_key is not None:
            self._active.setdefault(quota_key, set()).add(run_id)

    def append(self, state: RunState) -> None:
        """See `RunStore.append`."""
        run = self._runs.get(state.run_id)
        if run is None:
            raise RunNotFoundError(state.run_id)
        if state.status is not None:
            run.status = state.status
        text = state.to_json()
        supersedable = (
            state.type is EventType.PROGRESS and not state.logs and state.partial_output is None
        )
        run.log.append(text, state.seq, state.type.value, len(text), supersedable)
        if run.log.finished:
            run.finished_at = time.monotonic()
            self._release(state.run_id, run.quota_key)

    def _release(self, run_id: str, quota_key: str | None) -> None:
        if quota_key is None:
            return
        active = self._active.get(quota_key)
        if active is not None:
            active.discard(run_id)
            if not active:
                del self._active[quota_key]

    def active_runs(self, quota_key: str) -> int:
        """Unfinished runs counted under ``quota_key`` (see `RunStore.create_run`)."""
        return len(self._active.get(quota_key, ()))

    async def get_info(self, run_id: str) -> RunInfo | None:
        """See `RunStore.get_info`."""
        run = self._get(run_id)
        if run is None:
            return None
        log = run.log
        latest = None
        for text in reversed(log.read_after(log.first_seq - 1) or []):
            if kind_of(text) != "done":
                latest = text
                break
        return RunInfo(
            run_id=run_id,
            principal=run.principal,
            status=run.status,
            first_seq=log.first_seq,
            last_seq=log.last_seq,
            finished=log.finished,
            latest=latest,
            cancel_requested=run.cancel_requested,
            attached=run.attached,
        )

    def subscribe(self, run_id: str, after_seq: int = 0) -> Subscription:
        """See `RunStore.subscribe`."""
        run = self._get(run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        return MemoryRunSubscription(run_id, run.log, after_seq)

    async def request_cancel(self, run_id: str, reason: str) -> bool:
        """See `RunStore.request_cancel`."""
        run = self._get(run_id)
        if run is None or run.log.finished:
            return False
        run.cancel_requested = True
        if self._cancel_handler is not None:
            self._cancel_handler(run_id, reason)
        return True

    async def claim_usage(self, run_id: str) -> bool:
        """True the first time it is asked for a run (see `RunStore.claim_usage`)."""
        run = self._runs.get(run_id)
        if run is None:
            return True  # evicted: this worker's manager is the only one to ask
        claimed, run.usage_claimed = run.usage_claimed, True
        return not claimed

    async def add_watcher(self, run_id: str, delta: int) -> int:
        """See `RunStore.add_watcher`."""
        run = self._runs.get(run_id)
        if run is None:
            return 0
        run.watchers = max(0, run.watchers + delta)
        return run.watchers
