"""Run stores: where every event of a run is kept, so that any reader can (re)join it.

The store is the seam between the task that runs a deployment (it appends events) and the
connections that stream them (they subscribe from a cursor). `MemoryRunStore` is the default;
``fastapi_ikstream.redis.RedisRunStore`` shares runs between workers.
"""

from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from ._exceptions import RunNotFoundError, StoreError
from ._log import RunLog
from ._models import EventType, RunState, RunStatus
from ._wire import sse_block

__all__ = [
    "CancelHandler",
    "MemoryRunStore",
    "RunInfo",
    "RunStore",
    "StoredEvent",
    "Subscription",
]

CancelHandler = Callable[[str, str], None]
"""Called by a store as ``handler(run_id, reason)`` when a cancel is asked for a local run."""


class StoredEvent:
    """One encoded event of a run: its seq, kind and compact JSON ``data``.

    Only the JSON is kept: the SSE block is built when it is written (well under a
    microsecond), which halves what a run's retained events cost in memory.
    """

    __slots__ = ("data", "run_id", "seq", "type")

    def __init__(self, run_id: str, seq: int, type: str, data: str) -> None:
        self.run_id = run_id
        self.seq = seq
        self.type = type
        self.data = data

    @classmethod
    def from_state(cls, state: RunState) -> StoredEvent:
        """Encode a `RunState`."""
        return cls(state.run_id, state.seq, state.type.value, state.to_json())

    @property
    def sse(self) -> bytes:
        """The SSE block (``event``, ``data``, ``id``), as ``format_sse_event`` encodes it."""
        return sse_block(self.data, self.type, f"{self.run_id}:{self.seq}")

    def sse_with_retry(self, retry: int) -> bytes:
        """The SSE block with a ``retry:`` field (milliseconds) added last."""
        return sse_block(self.data, self.type, f"{self.run_id}:{self.seq}", retry)

    @property
    def jsonl(self) -> bytes:
        """The JSON line."""
        return self.data.encode() + b"\n"

    def to_state(self) -> RunState:
        """Decode back into a `RunState`."""
        return RunState.model_validate_json(self.data)


def kind_of(data: str) -> str:
    """The event kind of a run state's JSON, read from its first field (``{"type":"…"``)."""
    if data.startswith('{"type":"'):
        return data[9 : data.index('"', 9)]
    kind = json.loads(data)["type"]
    return str(kind)


def reset_event(run_id: str, first_seq: int) -> StoredEvent:
    """The ``reset`` event for a reader whose cursor is older than the kept window.

    Its seq (and so its SSE id) is ``first_seq - 1``, so a reader that reconnects with it as
    ``Last-Event-ID`` resumes at the first kept event.
    """
    state = RunState(type=EventType.RESET, run_id=run_id, seq=first_seq - 1, first_seq=first_seq)
    return StoredEvent.from_state(state)


@dataclass(slots=True)
class RunInfo:
    """What a store knows about a run, without its events.

    Attributes:
        run_id: the run.
        principal: subject of the caller that started it, or None when auth is off.
        status: the last known status.
        first_seq: first seq still kept.
        last_seq: last seq appended.
        finished: true once ``done`` is appended.
        latest: JSON of the latest event other than ``done`` (or None).
        cancel_requested: true once a cancel has been asked for.
    """

    run_id: str
    principal: str | None
    status: RunStatus
    first_seq: int
    last_seq: int
    finished: bool
    latest: str | None
    cancel_requested: bool = False


class Subscription(ABC):
    """A reader's view of one run, from a cursor on.

    ``next_batch`` returns the events that follow the cursor (advancing it), waits for more
    when there are none, and returns None once ``done`` has been delivered.
    """

    cursor: int

    @abstractmethod
    async def next_batch(self, timeout: float | None) -> list[StoredEvent] | None:
        """The next events, in order.

        Args:
            timeout: seconds to wait for an event at most; None waits without limit.

        Returns:
            The events (a ``reset`` event first when the cursor was older than the kept
            window); ``[]`` when ``timeout`` passed with nothing new; None after ``done``.
        """

    async def aclose(self) -> None:  # noqa: B027
        """Stop reading and release what the subscription holds."""


class RunStore(ABC):
    """Keeps runs' events and meta data; subclass it for another backend.

    ``append`` is synchronous and never blocks the producer: a backend that writes over the
    network buffers and writes in order on its own, and ``flush`` waits for that.
    """

    @abstractmethod
    async def create_run(self, run_id: str, *, principal: str | None) -> None:
        """Register a new run before its first event.

        Raises:
            StoreError: the store is full of running runs.
        """

    @abstractmethod
    def append(self, state: RunState) -> None:
        """Append the run's next event (seqs in order, ``done`` last)."""

    async def flush(self, run_id: str) -> None:  # noqa: B027
        """Wait until the run's appended events are stored (a no-op in memory)."""

    @abstractmethod
    async def get_info(self, run_id: str) -> RunInfo | None:
        """The run's meta data, or None if unknown or expired."""

    @abstractmethod
    def subscribe(self, run_id: str, after_seq: int = 0) -> Subscription:
        """Read the run's events that follow ``after_seq`` (0 reads from the start).

        Raises:
            RunNotFoundError: no such run.
        """

    @abstractmethod
    async def request_cancel(self, run_id: str, reason: str) -> bool:
        """Ask for a run to be cancelled, from any worker.

        Returns:
            False if the run is unknown or already finished.
        """

    @abstractmethod
    async def add_watcher(self, run_id: str, delta: int) -> int:
        """Count a reader in (+1) or out (-1); returns the readers now open on all workers."""

    def set_cancel_handler(self, handler: CancelHandler | None) -> None:
        """Add a callback the store calls when a run this worker runs is cancelled.

        Several routers may share one store, so callbacks add up (each is kept once); None
        removes them all.
        """
        handlers: list[CancelHandler] = self.__dict__.setdefault("_cancel_handlers", [])
        if handler is None:
            handlers.clear()
        elif handler not in handlers:
            handlers.append(handler)
        self._cancel_handler: CancelHandler | None = self._notify_cancel if handlers else None

    def _notify_cancel(self, run_id: str, reason: str) -> None:
        for handler in list(self.__dict__.get("_cancel_handlers", ())):
            handler(run_id, reason)

    async def start(self) -> None:  # noqa: B027
        """Open connections and background readers (called on first use)."""

    async def aclose(self) -> None:  # noqa: B027
        """Close connections and background readers."""


class _MemoryRun:
    __slots__ = ("cancel_requested", "finished_at", "log", "principal", "status", "watchers")

    def __init__(self, principal: str | None, max_events: int) -> None:
        self.log: RunLog[str] = RunLog(max_events)
        self.principal = principal
        self.status = RunStatus.RECEIVED
        self.finished_at: float | None = None
        self.watchers = 0
        self.cancel_requested = False


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
        texts = log.read_after(self.cursor)
        if texts is None:
            head.append(reset_event(run_id, log.first_seq))
            self.cursor = log.first_seq - 1
            texts = log.read_after(self.cursor) or []
        start = self.cursor + 1
        batch = head + [
            StoredEvent(run_id, start + index, kind_of(text), text)
            for index, text in enumerate(texts)
        ]
        if batch:
            self.cursor = batch[-1].seq
            if batch[-1].type == "done":
                self._ended = True
        return batch

    async def next_batch(self, timeout: float | None) -> list[StoredEvent] | None:
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
        if timeout is not None:
            self._deadline = loop.time() + timeout
        return batch or []

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
    """Keeps runs in this process (the default). Bounded in runs, events and time.

    Args:
        max_runs: runs kept at most; when full, the oldest finished run is evicted, and a new
            run is refused (`StoreError`, answered 503) if all of them are still running.
            Default 1,000.
        max_events_per_run: events kept per run at least; older ones are dropped and a reader
            that asks for them gets a ``reset``. Default 10,000.
        retention: seconds a finished run stays readable. Default 300.0.
    """

    def __init__(
        self, *, max_runs: int = 1000, max_events_per_run: int = 10_000, retention: float = 300.0
    ) -> None:
        self.max_runs = max_runs
        self.max_events_per_run = max_events_per_run
        self.retention = retention
        self._runs: dict[str, _MemoryRun] = {}
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

    async def create_run(self, run_id: str, *, principal: str | None) -> None:
        """See `RunStore.create_run`."""
        if run_id in self._runs:
            raise StoreError(f"run {run_id} exists already")
        if len(self._runs) >= self.max_runs:
            self._purge()
        if len(self._runs) >= self.max_runs:
            finished = [(r.finished_at, k) for k, r in self._runs.items() if r.finished_at]
            if not finished:
                raise StoreError("too many runs in progress")
            del self._runs[min(finished)[1]]
        self._runs[run_id] = _MemoryRun(principal, self.max_events_per_run)

    def append(self, state: RunState) -> None:
        """See `RunStore.append`."""
        run = self._runs.get(state.run_id)
        if run is None:
            raise RunNotFoundError(state.run_id)
        if state.status is not None:
            run.status = state.status
        run.log.append(state.to_json(), state.seq, state.type.value)
        if run.log.finished:
            run.finished_at = time.monotonic()

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

    async def add_watcher(self, run_id: str, delta: int) -> int:
        """See `RunStore.add_watcher`."""
        run = self._runs.get(run_id)
        if run is None:
            return 0
        run.watchers = max(0, run.watchers + delta)
        return run.watchers
