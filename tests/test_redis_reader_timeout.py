"""The shared Redis reader after its read deadline passes: a new connection, never a reused one.

The worker's one blocking ``XREAD`` has a deadline (the block time plus a margin). When the
loop stalls past it (a long GC pause, a suspended VM; here the loop's clock jumps), the
reply may still be on its way. A connection whose reply is still due must not carry the
next ``XREAD``: it would read the previous command's reply, and every later one would be
one behind. The reader must drop that connection and open a new one, and a reader of the
run must still get every event, in order.

Seen from Redis (``CLIENT LIST``), without touching the store's internals: the connection
blocked in ``XREAD`` before the jump is gone after it, and another one reads.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from redis_server import RedisServer, run_redis_server
from stateful_support import JumpLoop

from fastapi_ikstream import EventType, RunState, RunStatus
from fastapi_ikstream.redis import RedisRunStore

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with run_redis_server() as server:
        yield server


def state(run_id: str, seq: int) -> RunState:
    type_ = EventType.RUN if seq == 1 else EventType.PROGRESS
    status = RunStatus.RECEIVED if seq == 1 else RunStatus.RUNNING
    return RunState(type=type_, run_id=run_id, seq=seq, status=status)


async def xread_connections(admin: aioredis.Redis) -> set[int]:
    """Ids of the connections that are running an ``XREAD`` now."""
    clients = await admin.client_list()
    return {int(client["id"]) for client in clients if client.get("cmd") == "xread"}


async def wait_for_xread(admin: aioredis.Redis) -> set[int]:
    """Poll ``CLIENT LIST`` until a connection runs an ``XREAD`` (a hang fails in 10 s)."""
    async with asyncio.timeout(10):
        while not (ids := await xread_connections(admin)):  # noqa: ASYNC110 - Redis, polled
            await asyncio.sleep(0.02)
    return ids


async def scenario(url: str, loop: JumpLoop) -> None:
    admin = aioredis.from_url(url, decode_responses=True)
    store = RedisRunStore(url, prefix=f"t{uuid.uuid4().hex[:8]}:")
    await store.start()
    try:
        run_id = f"r_{uuid.uuid4().hex[:24]}"
        await store.create_run(run_id, principal=None)
        store.append(state(run_id, 1))
        await store.flush(run_id)
        subscription = store.subscribe(run_id, 1)
        waiting = asyncio.create_task(subscription.next_batch(3600.0))
        before = await wait_for_xread(admin)

        loop.jump(60.0)  # past the read's deadline, while Redis still blocks the XREAD
        async with asyncio.timeout(10):
            while (now := await xread_connections(admin)) and now & before:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        after = await wait_for_xread(admin)
        assert not after & before  # a new connection reads; the old one is closed

        store.append(state(run_id, 2))
        await store.flush(run_id)
        seqs: list[int] = []
        async with asyncio.timeout(10):
            batch = await waiting
            while True:
                if batch:
                    seqs.extend(event.seq for event in batch)
                if 2 in seqs:
                    break
                batch = await subscription.next_batch(3600.0)
        assert seqs == [2]
        await subscription.aclose()
    finally:
        await store.aclose()
        await admin.aclose()


def test_a_read_past_its_deadline_gets_a_new_connection(redis_server: RedisServer) -> None:
    loop = JumpLoop()
    try:
        loop.run_until_complete(scenario(redis_server.url, loop))
    finally:
        loop.close()
