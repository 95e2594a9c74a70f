"""`RunManager`: the lifecycle of the runs one router drives on this worker.

A run's life, and what it holds at each step:

- **create**: the store registers it under its owner and counts it among its caller's
  unfinished runs (that count *is* the concurrent-run slot: it is taken in the same step as
  the store entry, and given back by the store when ``done`` is written, whatever ended the
  run: its end, a failure, a cancel, its timeout, shutdown, or an orphan sweep). Then a task
  runs the deployment.
- **attach / detach readers**: every open stream counts as a reader, on every worker
  (through the store). An *attached* run (started by a stream request) whose readers are all
  gone for ``reconnect_grace`` seconds is cancelled; a *detached* run (``POST /runs``) never
  is: it ends by finishing, ``DELETE``, its timeout or shutdown.
- **cancel**: asked from any worker through the store; the owning worker cancels the task.
- **finish**: the task ends with a terminal state and ``done``; the run leaves this manager.
- **expire**: the store forgets a finished run after its retention.

At shutdown (SIGTERM/SIGINT, or the lifespan's end) open streams are closed with a
``retry:`` hint so clients reconnect elsewhere, and owned runs get ``drain_timeout`` seconds
to finish before they are cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Literal

from ._exceptions import StoreError, StoreUnavailableError
from ._models import RunState
from ._observe import RunObserver
from ._once import StartOnce
from ._response import StreamHandle
from ._run import StreamingRun
from ._shutdown import on_shutdown_signal
from ._store import RunStore

__all__ = ["DisconnectPolicy", "RunManager"]

logger = logging.getLogger("fastapi_ikstream")

_CANCEL_RETRY_CAP = 5.0  # seconds between two tries of a cancel the store could not take

DisconnectPolicy = Literal["cancel", "continue"]

DEFAULT_RECONNECT_GRACE = 30.0
"""Seconds an attached run waits for a reader to come back: ten times the default ``retry``."""


class RunManager:
    """Drives runs into a store for one router on this worker.

    Args:
        store: where events go.
        on_disconnect: for attached runs: ``"cancel"`` (default) cancels a run once its last
            reader has been gone for ``reconnect_grace`` seconds; ``"continue"`` lets it run
            to the end in the store. Detached runs always continue.
        reconnect_grace: seconds an attached run waits for a reader to come back; keep it
            well above the ``retry`` delay sent to clients (a client that obeys ``retry:``
            comes back after that delay, plus its own jitter). Default 30.0.
        drain_timeout: seconds owned runs may take to finish at shutdown before they are
            cancelled. Default 5.0.
        observer: told when runs start and end (usage records, metrics). Default None.
    """

    def __init__(
        self,
        store: RunStore,
        *,
        on_disconnect: DisconnectPolicy = "cancel",
        reconnect_grace: float = DEFAULT_RECONNECT_GRACE,
        drain_timeout: float = 5.0,
        observer: RunObserver | None = None,
    ) -> None:
        self.store = store
        self.observer = observer
        self.on_disconnect = on_disconnect
        self.reconnect_grace = reconnect_grace
        self.drain_timeout = drain_timeout
        self.runs: dict[str, StreamingRun] = {}
        self.attached: set[str] = set()
        self.streams: set[StreamHandle] = set()
        self.accepting = True
        self._start = StartOnce()
        self._grace_tasks: dict[str, asyncio.Task[None]] = {}
        self._shutdown_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unhook: list[object] = []

    async def ensure_started(self) -> None:
        """Start the store, hook the cancel handler and the shutdown signals (once)."""
        await self._start.run(self._start_now)

    async def _start_now(self) -> None:
        self.store.set_cancel_handler(self._on_cancel)
        if self.observer is not None:
            self.store.set_orphan_handler(self.observer.run_orphaned)
        await self.store.start()
        self.accepting = True
        self._shutdown_task = None
        self._loop = asyncio.get_running_loop()
        self._unhook = [on_shutdown_signal(self._shutdown_now)]

    @property
    def in_grace(self) -> frozenset[str]:
        """Attached runs whose readers are all gone, waiting ``reconnect_grace`` for one."""
        return frozenset(self._grace_tasks)

    def install_signal_handlers(self) -> None:
        """Kept for compatibility: `ensure_started` hooks SIGTERM and SIGINT itself."""

    def _on_cancel(self, run_id: str, reason: str) -> None:
        run = self.runs.get(run_id)
        if run is not None:
            run.cancel(reason)

    # -- create / finish -------------------------------------------------------------------

    async def create(
        self,
        run: StreamingRun,
        *,
        owner: str | None,
        quota_key: str | None = None,
        max_active: int | None = None,
        attached: bool = True,
    ) -> None:
        """Register the run in the store and start it in a task.

        Args:
            run: the run, not yet started.
            owner: the identity allowed to read and cancel it (None: anyone).
            quota_key: whose unfinished runs it counts among.
            max_active: unfinished runs ``quota_key`` may have (None: no bound).
            attached: cancel it when its readers are gone (see the module docstring).

        Raises:
            QuotaExceededError: ``quota_key`` has ``max_active`` unfinished runs.
            StoreError: the store refused a new run.
        """
        await self.ensure_started()
        await self.store.create_run(
            run.run_id,
            principal=owner,
            quota_key=quota_key,
            max_active=max_active,
            attached=attached,
        )
        run_id = run.run_id
        self.runs[run_id] = run
        if attached:
            self.attached.add(run_id)
        sink: Callable[[RunState], None] = self.store.append
        if self.observer is not None:
            sink = self.observer.run_started(run, owner, sink)
        task = run.start(sink)
        task.add_done_callback(lambda _: self._finished(run))

    async def start_run(self, run: StreamingRun, *, principal: str | None) -> None:
        """Start an attached run owned by ``principal`` (see `create`)."""
        await self.create(run, owner=principal)

    def _finished(self, run: StreamingRun) -> None:
        run_id = run.run_id
        self.runs.pop(run_id, None)
        if self.observer is not None:
            self.observer.run_finished(run)
        self.attached.discard(run_id)
        grace = self._grace_tasks.pop(run_id, None)
        if grace is not None:
            grace.cancel()

    # -- readers ---------------------------------------------------------------------------

    async def reader_joined(self, run_id: str) -> None:
        """Count a reader in; a pending disconnect cancel is called off."""
        grace = self._grace_tasks.pop(run_id, None)
        if grace is not None:
            grace.cancel()
        await self.store.add_watcher(run_id, 1)

    async def reader_left(self, run_id: str) -> None:
        """Count a reader out; an attached, unwatched run is cancelled after the grace.

        A store that fails here is logged, not raised: this runs as a stream closes. If it
        is unavailable, an attached run of this worker still gets its grace: the cancel
        then counts again (``add_watcher(run_id, 0)``) before it cancels.
        """
        try:
            remaining = await self.store.add_watcher(run_id, -1)
            attached = remaining == 0 and await self._is_attached(run_id)
        except StoreError as exc:
            logger.warning("run %s: the store could not count a reader out: %s", run_id, exc)
            if self.observer is not None:
                self.observer.store_failed()
            attached = isinstance(exc, StoreUnavailableError) and run_id in self.attached
        # At shutdown the server closed the stream, not the client: the run drains instead.
        if not attached or self.on_disconnect != "cancel" or not self.accepting:
            return
        old = self._grace_tasks.pop(run_id, None)
        if old is not None:
            old.cancel()
        if self.reconnect_grace <= 0 and await self._cancel_if_unwatched(run_id):
            return
        grace = max(self.reconnect_grace, 0.0)
        task = asyncio.get_running_loop().create_task(self._grace(run_id, grace))
        self._grace_tasks[run_id] = task

    async def _is_attached(self, run_id: str) -> bool:
        if run_id in self.runs:
            return run_id in self.attached
        info = await self.store.get_info(run_id)  # a run another worker owns
        return info is not None and info.attached and not info.finished

    async def _grace(self, run_id: str, delay: float) -> None:
        """Cancel the run after ``delay`` seconds unless a reader came back.

        While the store is unavailable the cancel is tried again, 0.25 s after the failure
        and doubling up to `_CANCEL_RETRY_CAP` s, until it goes through, a reader comes
        back, or the run ends: a store outage as the grace ends must not leave the run
        running, unwatched, and holding its caller's slot.
        """
        await asyncio.sleep(delay)
        pause = 0.25
        while not await self._cancel_if_unwatched(run_id):
            await asyncio.sleep(pause)
            pause = min(pause * 2, _CANCEL_RETRY_CAP)
        if self._grace_tasks.get(run_id) is asyncio.current_task():
            del self._grace_tasks[run_id]

    async def _cancel_if_unwatched(self, run_id: str) -> bool:
        """Cancel the run if nobody reads it. Returns False if the store was unavailable."""
        try:
            if await self.store.add_watcher(run_id, 0) == 0:
                await self.store.request_cancel(run_id, "the client went away")
        except StoreError as exc:
            logger.warning("run %s: the store could not cancel an unwatched run: %s", run_id, exc)
            if self.observer is not None:
                self.observer.store_failed()
            return not isinstance(exc, StoreUnavailableError)
        return True

    async def cancel(self, run_id: str, reason: str) -> bool:
        """Ask for the run to be cancelled (on whichever worker runs it).

        Returns:
            False if the run is unknown or already finished.
        """
        return await self.store.request_cancel(run_id, reason)

    # -- shutdown --------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Stop taking runs, close open streams, and drain owned runs (thread-safe)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._shutdown_now)

    def _shutdown_now(self) -> None:
        if self._shutdown_task is None and self._start.started:
            self._shutdown_task = asyncio.get_running_loop().create_task(self.shutdown())

    async def shutdown(self) -> None:
        """Close every open stream now; let owned runs finish within ``drain_timeout``."""
        self.accepting = False
        for handle in list(self.streams):
            handle.stop()
        runs = list(self.runs.values())
        tasks = [run.task for run in runs if run.task is not None and not run.task.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.drain_timeout)
            for run in runs:
                if run.task in pending:
                    run.cancel("the server is shutting down")
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        for grace in self._grace_tasks.values():
            grace.cancel()
        self._grace_tasks.clear()
        # the runs' last events to the store, all at once: 1 s in all, even with it away
        flushes = [asyncio.ensure_future(self.store.flush(run.run_id)) for run in runs]
        if flushes:
            _, unflushed = await asyncio.wait(flushes, timeout=1.0)
            for flush in unflushed:
                flush.cancel()
            await asyncio.gather(*flushes, return_exceptions=True)  # failures are logged

    async def aclose(self) -> None:
        """Shut down and close the store; the manager starts again on its next use."""
        if self._shutdown_task is not None:
            await self._shutdown_task
        else:
            await self.shutdown()
        if self.observer is not None:
            await self.observer.drain()
        for unhook in self._unhook:
            if callable(unhook):
                unhook()
        self._unhook = []
        await self.store.aclose()
        self._start.started = False
        self._shutdown_task = None
        self.accepting = True  # a later use (another TestClient block) starts it again
