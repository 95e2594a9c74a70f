"""The Redis store's background work: the writer, the leases, the sweeper, the cancel channel.

`StoreTasks` is a base of `RedisRunStore`; it holds the loops and what they call, and
declares the store attributes they use.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.backoff import ExponentialBackoff

from .._store import CancelHandler
from ._reader import retry_forever
from ._records import LocalRun
from ._scripts import Scripts

__all__ = ["StoreTasks"]

logger = logging.getLogger("fastapi_ikstream")

_WRITE_BATCH = 256  # events per script call
_WRITE_RUNS = 64  # script calls per pipeline


class StoreTasks:
    """The background loops of `RedisRunStore` (see the module docstring)."""

    worker_id: str
    lease_seconds: float
    sweep_interval: float
    max_events_per_run: int
    _worker_key: str
    _retention_ms: int
    _lease_ms: int
    _live_ms: int
    _generation: int
    _local: dict[str, LocalRun]
    _wake_writer: asyncio.Event | None
    _pubsub: PubSub | None
    _cancel_handler: CancelHandler | None
    _keys: Callable[[str], list[str]]
    _lua: Callable[[], Scripts]
    _sweep: Callable[[], Awaitable[int]]

    @property
    def client(self) -> Redis:
        """The command client (started). Raises `StoreError` before `start`."""
        raise NotImplementedError

    def _dispatch_cancel(self, run_id: str, reason: str) -> None:
        run = self._local.get(run_id)
        handler = self._cancel_handler
        if run is None or run.cancel_handled or run.done or handler is None:
            return
        run.cancel_handled = True
        try:
            handler(run_id, reason)
        except Exception:
            logger.exception("run %s: the cancel handler raised", run_id)

    # -- internals: background tasks -------------------------------------------------------

    async def _write_loop(self, gen: int) -> None:
        wake = self._wake_writer
        assert wake is not None
        retry = retry_forever()
        while self._generation == gen:
            await wake.wait()
            wake.clear()
            while await retry.call_with_retry(lambda: self._write_round(gen), self._write_failed):
                pass

    async def _write_round(self, gen: int) -> bool:
        """Write one round of pending events; False when there is nothing (left) to write."""
        if self._generation != gen:
            return False
        runs = [(run_id, run) for run_id, run in self._local.items() if run.pending]
        if not runs:
            return False
        await self._write(runs[:_WRITE_RUNS])
        return True

    async def _write_failed(self, exc: Exception) -> None:
        logger.warning("run store: writing to Redis failed (%s); retrying", exc)

    async def _write(self, runs: list[tuple[str, LocalRun]]) -> None:
        append = self._lua().append
        sent: list[tuple[str, LocalRun, int]] = []
        async with self.client.pipeline(transaction=False) as pipe:
            for run_id, run in runs:
                chunk = list(itertools.islice(run.pending, _WRITE_BATCH))
                args: list[Any] = [
                    run_id,
                    self.max_events_per_run,
                    self._retention_ms,
                    self._live_ms,
                ]
                for event in chunk:
                    args.extend(event)
                await append(keys=self._keys(run_id), args=args, client=pipe)
                sent.append((run_id, run, chunk[-1][0]))
            results = await pipe.execute(raise_on_error=False)
        for (run_id, run, last), result in zip(sent, results, strict=True):
            while run.pending and run.pending[0][0] <= last:
                run.pending.popleft()
            run.written = max(run.written, last)
            if isinstance(result, Exception):
                logger.error("run %s: Redis refused its events: %s", run_id, result)
            elif result == -1 and not run.ended_elsewhere:
                run.ended_elsewhere = True
                logger.warning("run %s was ended by another worker; its events are dropped", run_id)
            elif result == -2:
                logger.warning("run %s is no longer in Redis; its events are dropped", run_id)
            if self._local.get(run_id) is run:
                del self._local[run_id]
                if not (run.done and run.written >= run.top):
                    self._local[run_id] = run  # to the end: runs beyond a round's share go next
            run.wake()

    async def _refresh_loop(self, gen: int) -> None:
        interval = max(0.02, self.lease_seconds / 3)
        while self._generation == gen:
            await asyncio.sleep(interval)
            if self._generation != gen:
                break
            try:
                await self._refresh()
            except Exception as exc:
                logger.warning("run store: renewing leases failed: %s", exc)

    async def _heartbeat(self) -> None:
        await self.client.set(self._worker_key, "1", px=self._lease_ms)

    async def _refresh(self) -> None:
        runs = [(rid, run) for rid, run in self._local.items() if not run.ended_elsewhere]
        refresh = self._lua().refresh
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self._worker_key, "1", px=self._lease_ms)
            for run_id, _ in runs:
                args: list[Any] = [run_id, self.worker_id, self._lease_ms, self._live_ms]
                await refresh(keys=self._keys(run_id), args=args, client=pipe)
            results = (await pipe.execute(raise_on_error=False))[1:]
        for (run_id, run), result in zip(runs, results, strict=True):
            if isinstance(result, Exception):
                logger.error("run %s: renewing its lease failed: %s", run_id, result)
                continue
            code = int(result[0])
            if code == 3:
                if result[1] == "1":  # a cancel whose notice this worker missed
                    self._dispatch_cancel(run_id, result[2] or "cancelled")
            elif not run.done:
                run.ended_elsewhere = True
                self._dispatch_cancel(run_id, "the run was ended by another worker")

    async def _sweep_loop(self, gen: int) -> None:
        while self._generation == gen:
            await asyncio.sleep(self.sweep_interval)
            if self._generation != gen:
                break
            try:
                await self._sweep()
            except Exception as exc:
                logger.warning("run store: sweeping orphaned runs failed: %s", exc)

    async def _listen_loop(self, gen: int) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        backoff = ExponentialBackoff(cap=2.0, base=0.025)  # 0.05 s, 0.1 s, … up to 2 s
        failures = 0
        while self._generation == gen:
            try:
                async for message in pubsub.listen():
                    failures = 0
                    if message.get("type") == "message":
                        self._on_notice(message["data"])
            except Exception as exc:
                logger.warning("run store: the cancel channel failed: %s", exc)
            failures += 1
            await asyncio.sleep(backoff.compute(failures))

    def _on_notice(self, data: str) -> None:
        try:
            notice = json.loads(data)
            run_id, reason = str(notice["run_id"]), str(notice["reason"])
        except (ValueError, KeyError, TypeError):
            logger.warning("run store: ignored a malformed cancel notice")
            return
        self._dispatch_cancel(run_id, reason)
