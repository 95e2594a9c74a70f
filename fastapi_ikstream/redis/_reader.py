"""One blocking ``XREAD`` per worker, fanning new events out to every local reader."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import TYPE_CHECKING, Any, cast

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from .._models import EventType
from .._redis_faults import Health, is_permanent
from ._records import events_of

if TYPE_CHECKING:
    from ._subscription import RedisRunSubscription

__all__ = ["SharedReader", "retry_forever"]

logger = logging.getLogger("fastapi_ikstream")

_RANGE_COUNT = 500  # entries per shared XREAD round
_BLOCK_SECONDS = 5.0  # one blocking XREAD waits this long at most


def retry_forever() -> Retry:
    """Retry any failure, forever, 0.05 s after the first, doubling up to 2 s.

    A success ends the call, so the next call starts again at 0.05 s.
    """
    # Every exception, as a background loop must survive whatever one round raises.
    errors = cast("tuple[type[RedisError], ...]", (Exception,))
    return Retry(ExponentialBackoff(cap=2.0, base=0.025), retries=-1, supported_errors=errors)


class SharedReader:
    """One blocking ``XREAD`` per worker over every stream local readers wait on.

    New events are pushed to each reader's bounded queue. When the set of streams changes
    while the read blocks, ``CLIENT UNBLOCK`` (sent on the command pool) ends it early.
    """

    def __init__(self, client: Redis, health: Health, prefix: str, pool: ConnectionPool) -> None:
        self.client = client
        self.health = health
        self.pool = pool
        self.subs: dict[str, set[RedisRunSubscription]] = {}
        self.pos: dict[str, int] = {}
        self.gen = 0
        self.snap_gen = 0
        self.in_flight = False
        self.client_id: int | None = None
        self.conn: AbstractConnection | None = None
        self.changed = asyncio.Event()
        self.kicker: asyncio.Task[None] | None = None
        self.running = True
        self.stream_prefix = f"{prefix}run:"

    def register(self, sub: RedisRunSubscription) -> None:
        """Add a reader to the shared read (a reader behind it catches up alone first)."""
        run_id = sub.run_id
        subs = self.subs.get(run_id)
        sub.registered = True
        if subs is None:
            self.subs[run_id] = {sub}
            self.pos[run_id] = sub.cursor
            self.gen += 1
            self.changed.set()
            if self.kicker is None or self.kicker.done():
                self.kicker = asyncio.get_running_loop().create_task(self._unblock())
            return
        subs.add(sub)
        if self.pos[run_id] > sub.cursor:
            sub.need_range = True  # the shared read is past this reader: catch up alone

    def unregister(self, sub: RedisRunSubscription) -> None:
        """Remove a reader from the shared read."""
        sub.registered = False
        subs = self.subs.get(sub.run_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.subs[sub.run_id]
                del self.pos[sub.run_id]

    async def _unblock(self) -> None:
        backoff = ExponentialBackoff(cap=0.05, base=0.0005)  # 1 ms, 2 ms, … up to 50 ms
        tries = 0
        while self.running and self.snap_gen < self.gen:
            if self.in_flight and self.client_id is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self.client.client_unblock(self.client_id)
            tries += 1
            await asyncio.sleep(backoff.compute(tries))

    async def _connect(self) -> AbstractConnection:
        conn = self.conn
        if conn is None:
            conn = self.conn = self.pool.make_connection()  # type: ignore[no-untyped-call]
        if self.client_id is None:
            await conn.connect()
            await conn.send_command("CLIENT", "ID")
            self.client_id = int(await conn.read_response())
        return conn

    async def run(self) -> None:
        """Read and fan out until `aclose`; reconnect after a failure, with a backoff."""
        retry = retry_forever()
        while self.running:
            if not self.pos:
                self.changed.clear()
                self.snap_gen = self.gen
                await self.changed.wait()
                continue
            reply = await retry.call_with_retry(self._read_once, self._failed)
            if reply:
                try:
                    self._dispatch(reply)
                except Exception:
                    logger.exception("run store: could not read events from Redis")

    async def _read_once(self) -> Any:
        if not self.pos or not self.running:
            return None
        conn = await self._connect()
        if not self.pos:  # the last reader left while the connection was made
            return None
        self.snap_gen = self.gen
        runs = list(self.pos.items())
        keys = [self.stream_prefix + run_id for run_id, _ in runs]
        ids = [f"{seq}-0" for _, seq in runs]
        block_ms = int(_BLOCK_SECONDS * 1000)
        self.in_flight = True
        try:
            await conn.send_command(
                "XREAD", "COUNT", _RANGE_COUNT, "BLOCK", block_ms, "STREAMS", *keys, *ids
            )
            # Our own deadline, not ``read_response(timeout=...)``: on that timeout redis-py
            # returns None and keeps the connection with the reply still to come, so the
            # next command would read this one's reply. Cancelled by ``asyncio.timeout``,
            # redis-py disconnects instead, and the retry reconnects.
            async with asyncio.timeout(_BLOCK_SECONDS + 5.0):
                reply = await conn.read_response(timeout=math.inf)
        finally:
            self.in_flight = False
        self.health.ok()
        return reply

    async def _failed(self, exc: Exception) -> None:
        permanent = is_permanent(exc)
        exc_text = str(exc) or type(exc).__name__  # a deadline's TimeoutError has no text
        if permanent:  # Redis refused the command itself: a bug here, or a foreign key
            logger.error("run store: Redis refused the shared read (%s); reconnecting", exc_text)
        else:
            logger.warning("run store: the shared Redis reader failed (%s); reconnecting", exc_text)
            self.health.failed()
        self._fail_readers(drop=permanent)
        await self._disconnect()

    def _fail_readers(self, *, drop: bool) -> None:
        """Wake every reader: each rides the outage out, or leaves on a permanent error.

        See `RedisRunSubscription`; a reader that leaves reads Redis on its own.
        """
        for subs in list(self.subs.values()):
            for sub in list(subs):
                if drop:
                    self.unregister(sub)
                    sub.need_range = True
                sub.wake(True)

    def _dispatch(self, reply: Any) -> None:
        items = reply.items() if isinstance(reply, dict) else reply
        cut = len(self.stream_prefix)
        for key, entries in items:
            run_id = key[cut:]
            subs = self.subs.get(run_id)
            if not subs or not entries:
                continue
            events = events_of(run_id, entries)
            self.pos[run_id] = max(self.pos[run_id], events[-1].seq)
            for sub in list(subs):
                sub.push(events)
            if events[-1].type == EventType.DONE.value:
                for sub in subs:
                    sub.registered = False
                del self.subs[run_id]
                del self.pos[run_id]

    async def _disconnect(self) -> None:
        self.client_id = None
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.disconnect(nowait=True)

    async def aclose(self) -> None:
        """Stop, disconnect, and wake every reader."""
        self.running = False
        if self.kicker is not None:
            self.kicker.cancel()
            await asyncio.gather(self.kicker, return_exceptions=True)
        await self._disconnect()
        await self.pool.aclose()
        for subs in self.subs.values():
            for sub in subs:
                sub.registered = False
                sub.wake(True)
        self.subs.clear()
        self.pos.clear()
