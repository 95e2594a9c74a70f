"""`RunManager`: the runs this worker drives, their readers, cancels and shutdown.

It starts a `StreamingRun` into a run store, counts the readers of each run (on every
worker, through the store), applies the disconnect policy, carries out cancels asked from
any worker, and on shutdown closes open streams and ends the runs it owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any, Literal

from ._exceptions import StoreError
from ._response import StreamHandle
from ._run import StreamingRun
from ._store import RunStore

__all__ = ["DisconnectPolicy", "RunManager"]

logger = logging.getLogger("fastapi_ikstream")

DisconnectPolicy = Literal["cancel", "continue"]
Release = Callable[[], Awaitable[None]]


async def _call(release: Release) -> None:
    await release()


class RunManager:
    """Drives runs into a store for one router on this worker.

    Args:
        store: where events go.
        on_disconnect: ``"cancel"`` cancels a run once its last reader has been gone for
            ``reconnect_grace`` seconds; ``"continue"`` lets it run to the end in the store.
        reconnect_grace: seconds a run waits for a reader to come back. Default 3.0.
        drain_timeout: seconds owned runs may take to finish at shutdown before they are
            cancelled. Default 5.0.
    """

    def __init__(
        self,
        store: RunStore,
        *,
        on_disconnect: DisconnectPolicy = "cancel",
        reconnect_grace: float = 3.0,
        drain_timeout: float = 5.0,
    ) -> None:
        self.store = store
        self.on_disconnect = on_disconnect
        self.reconnect_grace = reconnect_grace
        self.drain_timeout = drain_timeout
        self.runs: dict[str, StreamingRun] = {}
        self.streams: set[StreamHandle] = set()
        self.accepting = True
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._grace_tasks: dict[str, asyncio.Task[None]] = {}
        self._shutdown_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous_handlers: dict[int, Any] = {}

    async def ensure_started(self) -> None:
        """Start the store and hook the cancel handler (once)."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            self.store.set_cancel_handler(self._on_cancel)
            await self.store.start()
            self.accepting = True
            self._shutdown_task = None
            self._loop = asyncio.get_running_loop()
            self._started = True

    def _on_cancel(self, run_id: str, reason: str) -> None:
        run = self.runs.get(run_id)
        if run is not None:
            run.cancel(reason)

    async def start_run(
        self, run: StreamingRun, *, principal: str | None, release: Release | None = None
    ) -> None:
        """Register the run in the store and start it in a task.

        Args:
            run: the run, not yet started.
            principal: the subject allowed to read and cancel it (None: anyone).
            release: awaited once the run has ended (frees a concurrency slot).

        Raises:
            StoreError: the store refused a new run.
        """
        await self.ensure_started()
        await self.store.create_run(run.run_id, principal=principal)
        self.runs[run.run_id] = run
        task = run.start(self.store.append)

        def finished(_: asyncio.Task[None]) -> None:
            self.runs.pop(run.run_id, None)
            grace = self._grace_tasks.pop(run.run_id, None)
            if grace is not None:
                grace.cancel()
            if release is not None:
                asyncio.get_running_loop().create_task(_call(release))

        task.add_done_callback(finished)

    async def reader_joined(self, run_id: str) -> None:
        """Count a reader in; a pending disconnect cancel is called off."""
        grace = self._grace_tasks.pop(run_id, None)
        if grace is not None:
            grace.cancel()
        await self.store.add_watcher(run_id, 1)

    async def reader_left(self, run_id: str) -> None:
        """Count a reader out; with the ``cancel`` policy, cancel after the grace time.

        A store that fails here is logged, not raised: this runs as a stream closes.
        """
        try:
            remaining = await self.store.add_watcher(run_id, -1)
        except StoreError as exc:
            logger.warning("run %s: the store could not count a reader out: %s", run_id, exc)
            return
        # At shutdown the server closed the stream, not the client: the run drains instead.
        if remaining > 0 or self.on_disconnect != "cancel" or not self.accepting:
            return
        if self.reconnect_grace <= 0:
            await self._cancel_if_unwatched(run_id)
            return
        old = self._grace_tasks.pop(run_id, None)
        if old is not None:
            old.cancel()
        self._grace_tasks[run_id] = asyncio.get_running_loop().create_task(self._grace(run_id))

    async def _grace(self, run_id: str) -> None:
        await asyncio.sleep(self.reconnect_grace)
        self._grace_tasks.pop(run_id, None)
        await self._cancel_if_unwatched(run_id)

    async def _cancel_if_unwatched(self, run_id: str) -> None:
        try:
            if await self.store.add_watcher(run_id, 0) == 0:
                await self.store.request_cancel(run_id, "the client went away")
        except StoreError as exc:
            logger.warning("run %s: the store could not cancel an unwatched run: %s", run_id, exc)

    # -- shutdown --------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Chain SIGTERM and SIGINT so open streams close before the server waits on them.

        uvicorn waits for open connections before it runs the lifespan shutdown, so streams
        must be closed when the signal arrives. The previous handlers (uvicorn's) still run.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            if getattr(previous, "_ikstream", None) is self:  # other routers' handlers chain
                continue
            self._previous_handlers[sig] = previous

            def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
                self.begin_shutdown()
                if callable(previous):
                    previous(signum, frame)

            handler._ikstream = self  # type: ignore[attr-defined]
            signal.signal(sig, handler)

    def restore_signal_handlers(self) -> None:
        """Put back the handlers `install_signal_handlers` replaced."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._previous_handlers.items():
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(sig, previous)
        self._previous_handlers.clear()

    def begin_shutdown(self) -> None:
        """Stop taking runs, close open streams, and drain owned runs (thread-safe)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._shutdown_now)

    def _shutdown_now(self) -> None:
        if self._shutdown_task is None:
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
        for run in runs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.store.flush(run.run_id), 1.0)

    async def aclose(self) -> None:
        """Shut down and close the store."""
        if self._shutdown_task is not None:
            await self._shutdown_task
        else:
            await self.shutdown()
        self.restore_signal_handlers()
        await self.store.aclose()
        self._started = False
