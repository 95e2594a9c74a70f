"""Run stores: where every event of a run is kept, so that any reader can (re)join it.

The store is the seam between the task that runs a deployment (it appends events) and the
connections that stream them (they subscribe from a cursor). ``MemoryRunStore`` (in ``_memory``)
is the default; ``fastapi_ikstream.redis.RedisRunStore`` shares runs between workers.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ._models import EventType, RunState, RunStatus
from ._wire import sse_block

logger = logging.getLogger("fastapi_ikstream")

__all__ = [
    "CancelHandler",
    "OrphanHandler",
    "RunInfo",
    "RunStore",
    "StoredEvent",
    "Subscription",
]

CancelHandler = Callable[[str, str], None]
"""Called by a store as ``handler(run_id, reason)`` when a cancel is asked for a local run."""

OrphanHandler = Callable[[str], None]
"""Called by a store as ``handler(run_id)`` once it has ended a run whose owner stopped."""


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
        attached: true for a run tied to the connection that started it (cancelled when
            its readers are gone past the grace time); false for a detached run.
        created_at: when the run was created, in seconds since the epoch, if the store
            keeps it (a shared store does: its usage record needs it when the worker that
            ran it stopped).
        router: the name of the router that ran it, if the store keeps it (`keep_usage`).
        deployment: the name of its deployment, likewise.
        usage: the deployment's own usage reported so far, likewise.
    """

    run_id: str
    principal: str | None
    status: RunStatus
    first_seq: int
    last_seq: int
    finished: bool
    latest: str | None
    cancel_requested: bool = False
    attached: bool = False
    created_at: float | None = None
    router: str | None = None
    deployment: str | None = None
    usage: dict[str, int | float | str] | None = None


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
    async def create_run(
        self,
        run_id: str,
        *,
        principal: str | None,
        quota_key: str | None = None,
        max_active: int | None = None,
        attached: bool = False,
    ) -> None:
        """Register a new run before its first event.

        Args:
            run_id: the new run's id.
            principal: the identity allowed to read and cancel it (None: anyone).
            quota_key: whose unfinished runs this one counts among (a caller's key).
            max_active: refuse the run when ``quota_key`` has this many unfinished runs
                already (checked and counted in one step); None for no bound.
            attached: see `RunInfo.attached`.

        Raises:
            QuotaExceededError: ``quota_key`` has ``max_active`` unfinished runs.
            StoreError: the store is full of running runs, or cannot be reached.
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

    async def claim_usage(self, run_id: str) -> bool:
        """Claim the reporting of the run's usage record: True for the first claim only.

        Several workers may see a run end (its owner, and a worker that swept it as an
        orphan): the one that gets True reports it. This default, for a store that only one
        worker uses, always says True; a shared store must answer True once in all.

        Raises:
            StoreError: the store cannot be reached (the caller reports anyway: usage is
                delivered at least once).
        """
        return True

    async def keep_usage(  # noqa: B027
        self,
        run_id: str,
        *,
        router: str,
        deployment: str | None,
        usage: Mapping[str, int | float | str],
    ) -> None:
        """Keep what the run's usage record needs in its meta data, for an orphan's record.

        A shared store overrides it, and `get_info` gives the values back: when the run's
        worker stops, the worker that ends the run as ``orphaned`` reports it with them.
        Called when a metered run starts and each time its usage changes (one call at a
        time per run, the latest values). This default, for a store that only one worker
        uses, keeps nothing, and a router does not call it.

        Raises:
            StoreError: the store cannot be reached.
        """

    def set_orphan_handler(self, handler: OrphanHandler | None) -> None:
        """Add a callback the store calls once it has ended a run whose owner stopped.

        A store without orphans (one worker) never calls it. Callbacks add up as in
        `set_cancel_handler`; None removes them all.
        """
        handlers: list[OrphanHandler] = self.__dict__.setdefault("_orphan_handlers", [])
        if handler is None:
            handlers.clear()
        elif handler not in handlers:
            handlers.append(handler)

    def _notify_orphaned(self, run_id: str) -> None:
        for handler in list(self.__dict__.get("_orphan_handlers", ())):
            try:
                handler(run_id)
            except Exception:
                logger.exception("run %s: the orphan handler raised", run_id)

    async def start(self) -> None:  # noqa: B027
        """Open connections and background readers (called on first use)."""

    async def aclose(self) -> None:  # noqa: B027
        """Close connections and background readers."""
