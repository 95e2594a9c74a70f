"""The Redis store's life cycle: connecting, starting its background tasks, closing.

`StoreLifecycle` is a base of `RedisRunStore`, above `StoreTasks` (the loops it starts);
it declares the store attributes it uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.exceptions import RedisError

from .._once import StartOnce
from .._redis_faults import Health, unavailable
from ._background import StoreTasks
from ._reader import SharedReader
from ._scripts import Scripts

if TYPE_CHECKING:
    from ._subscription import RedisRunSubscription

__all__ = ["StoreLifecycle"]

_CLOSE_FLUSH_SECONDS = 2.0


class StoreLifecycle(StoreTasks):
    """`start` and `aclose` of `RedisRunStore` (see the module docstring)."""

    url: str
    prefix: str
    max_connections: int
    redis_options: dict[str, Any]
    cancel_channel: str
    health: Health
    _start: StartOnce
    _closed: bool
    _closing: bool
    _tasks: list[asyncio.Task[None]]
    _client: Redis | None
    _pubsub_client: Redis | None
    _reader: SharedReader | None
    _scripts: Scripts | None
    _subscriptions: weakref.WeakSet[RedisRunSubscription]
    flush: Callable[[str], Awaitable[None]]

    async def start(self) -> None:
        """Connect and start the writer, the shared reader, the lease and cancel tasks.

        Called on first use; safe to call more than once.

        Raises:
            StoreError: Redis cannot be reached.
        """
        await self._start.run(self._connect)

    async def _connect(self) -> None:
        options = {**self.redis_options, "decode_responses": True}
        pool = BlockingConnectionPool.from_url(
            self.url, max_connections=self.max_connections, **options
        )
        client = Redis.from_pool(pool)
        pubsub_client = Redis.from_url(self.url, **options)
        pubsub = pubsub_client.pubsub(ignore_subscribe_messages=True)
        self._client = client
        self._scripts = Scripts(client)
        try:
            await client.ping()
            await self._heartbeat()
            await pubsub.subscribe(self.cancel_channel)
        except (RedisError, OSError) as exc:
            self._client = None
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await pubsub_client.aclose()
            await client.aclose()
            raise unavailable(exc, "connecting") from None
        self._pubsub_client = pubsub_client
        self._pubsub = pubsub
        self._wake_writer = asyncio.Event()
        reader_pool = ConnectionPool.from_url(self.url, **options)
        self._reader = SharedReader(client, self.health, self.prefix, reader_pool)
        self._generation += 1
        gen = self._generation
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._write_loop(gen), name="ikstream-redis-writer"),
            loop.create_task(self._reader.run(), name="ikstream-redis-reader"),
            loop.create_task(self._refresh_loop(gen), name="ikstream-redis-leases"),
            loop.create_task(self._sweep_loop(gen), name="ikstream-redis-sweeper"),
            loop.create_task(self._listen_loop(gen), name="ikstream-redis-cancels"),
        ]
        self._closed = False

    async def _ensure_started(self) -> None:
        if not self._start.started:
            await self.start()

    async def aclose(self) -> None:
        """Write what is queued (for up to 2 s), stop the background tasks and disconnect.

        Runs this worker still owns are not ended: their leases lapse and another worker
        ends them as ``orphaned``.
        """
        if not self._start.started or self._closing:
            return
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flush_all(), _CLOSE_FLUSH_SECONDS)
        self._start.started = False
        self._closed = True
        self._generation += 1  # background loops end even if a cancellation gets lost
        if self._reader is not None:
            self._reader.running = False
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        with contextlib.suppress(RedisError, OSError):
            await asyncio.wait_for(self.client.delete(self._worker_key), 1.0)
        for run in self._local.values():
            run.wake()
        self._local.clear()
        if self._reader is not None:
            await self._reader.aclose()
        for subscription in list(self._subscriptions):
            subscription.wake(False)
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        if self._pubsub_client is not None:
            await self._pubsub_client.aclose()
        if self._client is not None:
            await self._client.aclose()
        self._client = self._pubsub_client = self._pubsub = None
        self._reader = None
        self._scripts = None
        self._start.reset()
        self._closing = False

    async def _flush_all(self) -> None:
        for run_id in list(self._local):
            await self.flush(run_id)
