"""`RedisRunStore`: runs kept in Redis, shared by every worker that points at the same server.

The key layout is described in `fastapi_ikstream.redis`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
import weakref
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from .._exceptions import QuotaExceededError, RunNotFoundError, StoreError
from .._models import EventType, RunState, RunStatus
from .._once import StartOnce
from .._redis_faults import Health, translated
from .._store import CancelHandler, RunInfo, RunStore, Subscription
from ._lifecycle import StoreLifecycle
from ._reader import SharedReader
from ._reads import ReadContext, RunLimits, RunReads, run_keys
from ._records import LocalRun, fields_of
from ._scripts import Scripts
from ._subscription import RedisRunSubscription

__all__ = ["RedisRunStore"]


class RedisRunStore(StoreLifecycle, RunStore):
    """Keeps runs in Redis, shared by every worker that points at the same server.

    ``append`` never waits on the network: events are queued per run and written in order by
    a background task, several per script call when they pile up (``flush`` waits for them).
    The worker that creates a run owns it and holds a lease on it; if the lease lapses
    before the run ends (the worker died, even by ``kill -9``), any worker ends the run with
    a ``failed`` event (code ``orphaned``) and ``done``, exactly once.

    Example::

        store = RedisRunStore("redis://127.0.0.1:6379/0", retention=600)
        router = create_router(deployment, store=store)

    Args:
        url: the Redis URL (``redis://``, ``rediss://`` or ``unix://``). Default
            ``"redis://127.0.0.1:6379/0"``.
        prefix: prefix of every key and channel. Default ``"ikstream:"``.
        max_events_per_run: events kept per run (the stream is trimmed exactly to it); a
            reader that asks for older ones gets a ``reset``. Default 10,000.
        max_bytes_per_run: bytes of event JSON kept per run at most; the oldest events are
            dropped first (a reader that asks for them gets a ``reset``), the last two (a
            run's terminal state and ``done``) always stay. None for no bound. Default 16 MiB.
        retention: seconds a finished run stays readable. Default 300.0.
        lease_seconds: lifetime of the owner's lease, refreshed three times per lease. A run
            whose owner stops is ended as ``orphaned`` within about ``lease_seconds +
            sweep_interval``. Default 5.0.
        sweep_interval: seconds between two searches for runs whose lease lapsed; None uses
            ``lease_seconds``. Default None.
        max_watcher_queue: events buffered per local reader; a reader that falls further
            behind reads from its own cursor instead. Default 256.
        max_connections: connections of the command pool; callers wait for a free one.
            Default 16.
        **redis_options: passed to ``redis.asyncio.Redis.from_url`` and the pools
            (e.g. ``socket_timeout``, ``password``, ``ssl_ca_certs``).

    Raises:
        MissingExtraError: on import, when ``redis`` is not installed.
    """

    def __init__(  # noqa: PLR0913 - public constructor: keyword-only options
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "ikstream:",
        max_events_per_run: int = 10_000,
        max_bytes_per_run: int | None = 16 * 1024 * 1024,
        retention: float = 300.0,
        lease_seconds: float = 5.0,
        sweep_interval: float | None = None,
        max_watcher_queue: int = 256,
        max_connections: int = 16,
        **redis_options: Any,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.max_events_per_run = max(1, max_events_per_run)
        self.max_bytes_per_run = max_bytes_per_run
        self.retention = retention
        self.lease_seconds = lease_seconds
        self.sweep_interval = lease_seconds if sweep_interval is None else sweep_interval
        self.max_watcher_queue = max(1, max_watcher_queue)
        self.max_connections = max(2, max_connections)
        self.redis_options = redis_options
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.cancel_channel = f"{prefix}cancel"
        self._watching: dict[str, int] = {}  # run id -> this worker's open readers of it
        self._worker_key = f"{prefix}worker:{self.worker_id}"
        self._retention_ms = max(1, int(retention * 1000))
        self._lease_ms = max(1, int(lease_seconds * 1000))
        self._live_ms = self._retention_ms + 2 * self._lease_ms + int(self.sweep_interval * 1000)
        self._idle_check = max(0.05, lease_seconds)
        self._cancel_handler: CancelHandler | None = None
        self._local: dict[str, LocalRun] = {}
        self._start = StartOnce()
        self._closed = False
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._generation = 0
        self._client: Redis | None = None
        self._pubsub_client: Redis | None = None
        self._pubsub: PubSub | None = None
        self._reader: SharedReader | None = None
        self._wake_writer: asyncio.Event | None = None
        self._scripts: Scripts | None = None
        self._subscriptions: weakref.WeakSet[RedisRunSubscription] = weakref.WeakSet()
        self.health = Health()
        limits = RunLimits(self.max_events_per_run, self._retention_ms, self._live_ms)
        self._reads = RunReads(
            lambda: self.client, self._lua, prefix, limits, self._notify_orphaned
        )
        self._context = ReadContext(
            reads=self._reads,
            health=self.health,
            max_queue=self.max_watcher_queue,
            idle_check=self._idle_check,
            reader=lambda: self._reader,
            ensure_started=self._ensure_started,
            started=lambda: self._start.started,
            closed=lambda: self._closed,
        )

    # -- keys ------------------------------------------------------------------------------

    def _keys(self, run_id: str) -> list[str]:
        return run_keys(self.prefix, run_id)

    def _lua(self) -> Scripts:
        if self._scripts is None:
            raise StoreError("the Redis run store is not started")
        return self._scripts

    @property
    def client(self) -> Redis:
        """The command client (started). Raises `StoreError` before `start`."""
        if self._client is None:
            raise StoreError("the Redis run store is not started")
        return self._client

    # -- runs ------------------------------------------------------------------------------

    @translated("creating a run")
    async def create_run(
        self,
        run_id: str,
        *,
        principal: str | None,
        quota_key: str | None = None,
        max_active: int | None = None,
        attached: bool = False,
    ) -> None:
        """Register a new run, owned by this worker (see `RunStore.create_run`).

        The caller's unfinished runs are counted in Redis, so ``max_active`` holds across
        every worker of the store.

        Raises:
            QuotaExceededError: ``quota_key`` has ``max_active`` unfinished runs.
            StoreError: the run exists already.
            StoreUnavailableError: Redis cannot be reached.
        """
        await self._ensure_started()
        if run_id in self._local:
            raise StoreError(f"run {run_id} exists already")
        args = [run_id, self.worker_id, principal or "", "0" if principal is None else "1"]
        holder = "" if quota_key is None else f"{self.prefix}holder:{quota_key}"
        extra = [
            "1" if attached else "0",
            holder,
            max_active or 0,
            f"{self.prefix}meta:",
            self.max_bytes_per_run or 0,
        ]
        created = await self._lua().create(
            keys=self._keys(run_id), args=[*args, self._lease_ms, self._live_ms, *extra]
        )
        if created == -1:
            raise QuotaExceededError(max_active or 0)
        if not created:
            raise StoreError(f"run {run_id} exists already")
        self._local[run_id] = LocalRun()

    def append(self, state: RunState) -> None:
        """Queue the run's next event for writing; never blocks (see `RunStore.append`).

        When more than ``max_events_per_run`` events of a run wait to be written (Redis is
        slow or away), the oldest are dropped: they would be trimmed on writing anyway, and
        readers that asked for them get a ``reset``.

        Raises:
            RunNotFoundError: the run was not created by this store.
            ValueError: the seq does not follow the previous one, or ``done`` was appended.
        """
        run = self._local.get(state.run_id)
        if run is None:
            if self._closed:
                return
            raise RunNotFoundError(state.run_id)
        if run.done:
            raise ValueError("the run's log already ended with 'done'")
        if state.seq != run.top + 1:
            raise ValueError(f"seq {state.seq} does not follow {run.top}")
        run.top = state.seq
        run.pending.append(fields_of(state))
        if len(run.pending) > self.max_events_per_run:
            run.pending.popleft()
        if state.type is EventType.DONE:
            run.done = True
        if self._wake_writer is not None:
            self._wake_writer.set()

    async def flush(self, run_id: str) -> None:
        """Wait until every event appended so far for the run is written to Redis."""
        run = self._local.get(run_id)
        if run is None:
            return
        target = run.top
        loop = asyncio.get_running_loop()
        while run.written < target and self._local.get(run_id) is run and self._start.started:
            fut: asyncio.Future[None] = loop.create_future()
            run.waiters.append(fut)
            await fut

    @translated("reading a run")
    async def get_info(self, run_id: str) -> RunInfo | None:
        """See `RunStore.get_info`."""
        await self._ensure_started()
        data: dict[Any, Any] = await self.client.hgetall(self._keys(run_id)[1])
        if not data or "last_seq" not in data:
            return None
        return RunInfo(
            run_id=run_id,
            principal=data.get("principal"),
            status=RunStatus(data.get("status", RunStatus.RECEIVED.value)),
            first_seq=int(data.get("first_seq", "1")),
            last_seq=int(data["last_seq"]),
            finished=data.get("finished") == "1",
            latest=data.get("latest"),
            cancel_requested=data.get("cancel") == "1",
            attached=data.get("attached") == "1",
            created_at=int(data["created"]) / 1000 if "created" in data else None,
            router=data.get("u_router"),
            deployment=data.get("u_deployment"),
            usage=json.loads(data["u_usage"]) if "u_usage" in data else None,
        )

    def subscribe(self, run_id: str, after_seq: int = 0) -> Subscription:
        """Read the run's events after ``after_seq`` (see `RunStore.subscribe`).

        The run is looked up on the first ``next_batch`` (this method cannot wait on
        Redis): for an unknown or expired run, ``next_batch`` returns None at once. Check
        with `get_info` first to answer 404.
        """
        subscription = RedisRunSubscription(self._context, run_id, after_seq)
        self._subscriptions.add(subscription)
        return subscription

    @translated("cancelling a run")
    async def request_cancel(self, run_id: str, reason: str) -> bool:
        """Set the run's durable cancel flag and notify every worker (see `RunStore`)."""
        await self._ensure_started()
        notice = json.dumps({"run_id": run_id, "reason": reason})
        accepted = await self._lua().cancel(
            keys=[self._keys(run_id)[1]], args=[reason, self.cancel_channel, notice]
        )
        if accepted and run_id in self._local:
            self._dispatch_cancel(run_id, reason)
        return bool(accepted)

    @translated("counting readers")
    async def add_watcher(self, run_id: str, delta: int) -> int:
        """Count a reader in (+1) or out (-1); returns the readers open on all live workers.

        Each worker counts its own readers and writes that count (a value, so a call that
        failed is made good by the next one, even ``delta=0``) in the run's meta hash; the
        readers of a worker that stopped without counting them out no longer count once
        its heartbeat (renewed with the leases) lapses.

        Raises:
            StoreUnavailableError: Redis is unavailable; this worker's count is kept
                and written on the run's next call.
        """
        before = self._watching.get(run_id, 0)
        count = max(0, before + delta)
        self._set_watching(run_id, count)
        args: list[int | str] = [count, f"w:{self.worker_id}", f"{self.prefix}worker:"]
        try:
            await self._ensure_started()
            total = await self._lua().watch(keys=[self._keys(run_id)[1]], args=args)
        except BaseException:
            if delta > 0:  # the reader was refused: it never counted
                self._set_watching(run_id, before)
            raise
        return int(total)

    def _set_watching(self, run_id: str, count: int) -> None:
        if count:
            self._watching[run_id] = count
        else:
            self._watching.pop(run_id, None)

    @translated("claiming a usage record")
    async def claim_usage(self, run_id: str) -> bool:
        """True for the first worker that asks, of all workers (see `RunStore.claim_usage`).

        One ``SET NX`` on ``{prefix}usage:{run_id}``, kept as long as the run's keys.
        """
        await self._ensure_started()
        key = f"{self.prefix}usage:{run_id}"
        return bool(await self.client.set(key, self.worker_id, nx=True, px=self._live_ms))

    @translated("keeping a run's usage")
    async def keep_usage(
        self,
        run_id: str,
        *,
        router: str,
        deployment: str | None,
        usage: Mapping[str, int | float | str],
    ) -> None:
        """Keep the names and usage in the run's meta hash (see `RunStore.keep_usage`)."""
        await self._ensure_started()
        args = ["u_router", router, "u_usage", json.dumps(dict(usage))]
        if deployment is not None:
            args += ["u_deployment", deployment]
        await self._lua().keep(keys=[self._keys(run_id)[1]], args=args)

    @translated("sweeping")
    async def sweep(self) -> int:
        """End the runs whose owner's lease lapsed as ``orphaned`` (also done periodically).

        Returns:
            How many runs this call ended; concurrent sweeps on other workers end each
            run once in all.
        """
        await self._ensure_started()
        return await self._sweep()

    async def _sweep(self) -> int:
        due = await self._lua().due(keys=[self._keys("")[3]], args=[100])
        ended = 0
        for run_id in due:
            local = self._local.get(run_id)
            if local is not None and not local.ended_elsewhere:
                continue  # alive here: the lease task renews it
            if await self._reads.orphan_now(run_id):
                ended += 1
        return ended
