"""RedisRunStore against a real redis-server: sharing, resuming, bounds, leases, cancels."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from redis_server import RedisServer, run_redis_server

from fastapi_ikstream import EventType, RunState, RunStatus, StoreError, StoreUnavailableError
from fastapi_ikstream.errors import MissingExtraError, RunNotFoundError
from fastapi_ikstream.redis import ORPHANED_MESSAGE, RedisRunStore
from fastapi_ikstream.stores import StoredEvent

pytestmark = pytest.mark.redis

StoreFactory = Callable[..., RedisRunStore]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with run_redis_server() as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def make_store(redis_server: RedisServer, prefix: str) -> AsyncIterator[StoreFactory]:
    stores: list[RedisRunStore] = []

    def factory(**options: object) -> RedisRunStore:
        options.setdefault("prefix", prefix)
        store = RedisRunStore(redis_server.url, **options)  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield factory
    for store in stores:
        await store.aclose()


def state(
    run_id: str, seq: int, type_: EventType = EventType.PROGRESS, **fields: object
) -> RunState:
    if type_ is EventType.PROGRESS:
        fields.setdefault("status", RunStatus.RUNNING)
        fields.setdefault("progress", {"current": seq, "total": 1000})
    return RunState(type=type_, run_id=run_id, seq=seq, **fields)


def append_run(
    store: RedisRunStore, run_id: str, first: int, last: int, *, done: bool = False
) -> None:
    """Append seqs first..last (``run`` at seq 1), then ``result`` and ``done`` if asked."""
    for seq in range(first, last + 1):
        if seq == 1:
            store.append(state(run_id, 1, EventType.RUN, status=RunStatus.RECEIVED))
        else:
            store.append(state(run_id, seq))
    if done:
        store.append(
            state(run_id, last + 1, EventType.RESULT, status=RunStatus.COMPLETED, results=[])
        )
        store.append(state(run_id, last + 2, EventType.DONE, status=RunStatus.COMPLETED))


async def read_all(store: RedisRunStore, run_id: str, after: int = 0) -> list[StoredEvent]:
    sub = store.subscribe(run_id, after)
    events: list[StoredEvent] = []
    try:
        while (batch := await sub.next_batch(5.0)) is not None:
            events.extend(batch)
    finally:
        await sub.aclose()
    return events


async def test_append_then_subscribe_from_start_and_from_a_cursor(make_store: StoreFactory) -> None:
    store = make_store()
    async with asyncio.timeout(10):
        await store.create_run("r1", principal="alice")
        append_run(store, "r1", 1, 8, done=True)
        await store.flush("r1")
        events = await read_all(store, "r1")
        assert [e.seq for e in events] == list(range(1, 11))
        assert events[0].type == "run"
        assert events[-2].type == "result"
        assert events[-1].type == "done"
        assert events[3].to_state() == state("r1", 4)
        assert [e.seq for e in await read_all(store, "r1", after=6)] == [7, 8, 9, 10]
        assert await read_all(store, "r1", after=10) == []

        info = await store.get_info("r1")
        assert info is not None
        assert (info.principal, info.status, info.first_seq, info.last_seq) == (
            "alice",
            RunStatus.COMPLETED,
            1,
            10,
        )
        assert info.finished
        assert not info.cancel_requested
        assert info.latest is not None
        assert json.loads(info.latest)["type"] == "result"
        assert await store.get_info("unknown") is None
        assert await read_all(store, "unknown") == []


async def test_live_subscription_sees_events_as_they_come(make_store: StoreFactory) -> None:
    store = make_store()
    async with asyncio.timeout(10):
        await store.create_run("live", principal=None)
        sub = store.subscribe("live", 0)
        assert await sub.next_batch(0.05) == []  # nothing yet: the caller sends a keep-alive
        got: list[int] = []
        for seq in range(1, 21):
            append_run(store, "live", seq, seq)
            while len(got) < seq:
                batch = await sub.next_batch(2.0)
                assert batch, "an appended event did not arrive"
                got.extend(e.seq for e in batch)
        store.append(state("live", 21, EventType.DONE, status=RunStatus.COMPLETED))
        rest: list[int] = []
        while (batch := await sub.next_batch(2.0)) is not None:
            rest.extend(e.seq for e in batch)
        assert got + rest == list(range(1, 22))
        assert await sub.next_batch(0.1) is None
        info = await store.get_info("live")
        assert info is not None
        assert info.principal is None


async def test_a_reader_of_another_run_joins_the_blocked_shared_read(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    async with asyncio.timeout(10):
        for run_id in ("first", "second", "third"):
            await store.create_run(run_id, principal=None)
        first = store.subscribe("first", 0)
        assert await first.next_batch(0.2) == []  # the shared read now blocks on "first"
        for run_id in ("second", "third"):
            sub = store.subscribe(run_id, 0)
            assert await sub.next_batch(0.05) == []
            started = time.monotonic()
            append_run(store, run_id, 1, 1)
            batch = await sub.next_batch(3.0)
            assert [e.seq for e in batch or []] == [1]
            assert time.monotonic() - started < 1.0  # not after the blocked read's 5 s
            await sub.aclose()
        await first.aclose()


async def test_exactly_once_across_random_resubscribes(make_store: StoreFactory) -> None:
    store = make_store(max_watcher_queue=8)
    rng = random.Random(7)
    total = 400
    # The reader drops its connection right after each of these seqs and resubscribes from
    # its cursor while the writer goes on: the number of reconnects is fixed by the test,
    # not by how the event loop happens to schedule the two tasks.
    cuts = sorted(rng.sample(range(1, total), 12))
    dropped = {cut: asyncio.Event() for cut in cuts}
    async with asyncio.timeout(20):
        await store.create_run("rnd", principal=None)

        async def produce() -> None:
            for seq in range(1, total + 1):
                append_run(store, "rnd", seq, seq)
                if seq in dropped:
                    await dropped[seq].wait()
                elif seq % rng.randint(1, 20) == 0:
                    await asyncio.sleep(0.001)
            store.append(state("rnd", total + 1, EventType.DONE, status=RunStatus.COMPLETED))

        producer = asyncio.create_task(produce())
        seen: list[int] = []
        cursor = 0
        subscriptions = 0
        pending = list(cuts)
        ended = False
        while not ended:
            sub = store.subscribe("rnd", cursor)
            subscriptions += 1
            while True:
                batch = await sub.next_batch(2.0)
                if batch is None:
                    ended = True
                    break
                seen.extend(e.seq for e in batch)
                if batch:
                    cursor = batch[-1].seq
                if pending and cursor >= pending[0]:
                    dropped[pending.pop(0)].set()  # the writer resumes while this one drops
                    break
            await sub.aclose()
        await producer
        assert seen == list(range(1, total + 2))
        assert subscriptions == len(cuts) + 1
        assert not pending


async def test_two_workers_share_a_run_and_cancel_across_them(make_store: StoreFactory) -> None:
    a, b = make_store(), make_store()
    cancels: list[tuple[str, str]] = []
    cancelled = asyncio.Event()

    def on_cancel(run_id: str, reason: str) -> None:
        cancels.append((run_id, reason))
        cancelled.set()

    a.set_cancel_handler(on_cancel)
    b.set_cancel_handler(lambda run_id, reason: pytest.fail("B does not own the run"))
    async with asyncio.timeout(10):
        await a.create_run("shared", principal="bob")
        await b.start()
        append_run(a, "shared", 1, 5)
        await a.flush("shared")

        sub = b.subscribe("shared", 2)
        assert [e.seq for e in await sub.next_batch(2.0) or []] == [3, 4, 5]
        append_run(a, "shared", 6, 7)
        got: list[int] = []
        while len(got) < 2:
            got.extend(e.seq for e in await sub.next_batch(2.0) or [])
        assert got == [6, 7]

        assert await a.add_watcher("shared", 1) == 1
        assert await b.add_watcher("shared", 1) == 2
        assert await b.add_watcher("shared", -1) == 1
        assert await a.add_watcher("shared", 0) == 1
        assert await b.add_watcher("unknown", 1) == 0

        info = await b.get_info("shared")
        assert info is not None
        assert info.principal == "bob"
        assert info.last_seq == 7
        assert await b.request_cancel("shared", "stop it")
        await asyncio.wait_for(cancelled.wait(), 3)
        assert cancels == [("shared", "stop it")]
        info = await a.get_info("shared")
        assert info is not None
        assert info.cancel_requested

        a.append(state("shared", 8, EventType.CANCELLED, status=RunStatus.CANCELLED))
        a.append(state("shared", 9, EventType.DONE, status=RunStatus.CANCELLED))
        kinds: list[str] = []
        while (batch := await sub.next_batch(2.0)) is not None:
            kinds.extend(e.type for e in batch)
        assert kinds == ["cancelled", "done"]
        assert not await b.request_cancel("shared", "again")  # finished
        assert not await b.request_cancel("unknown", "no such run")
        assert cancels == [("shared", "stop it")]


async def test_a_lost_cancel_notice_is_recovered_from_the_flag(
    make_store: StoreFactory, redis_server: RedisServer, prefix: str
) -> None:
    store = make_store(lease_seconds=0.3)
    cancels: list[tuple[str, str]] = []
    cancelled = asyncio.Event()

    def on_cancel(run_id: str, reason: str) -> None:
        cancels.append((run_id, reason))
        cancelled.set()

    store.set_cancel_handler(on_cancel)
    async with asyncio.timeout(10):
        await store.create_run("quiet", principal=None)
        with redis_server.client() as client:  # the flag without the notice
            client.hset(f"{prefix}meta:quiet", mapping={"cancel": "1", "cancel_reason": "flag"})
        await asyncio.wait_for(cancelled.wait(), 3)
        assert cancels == [("quiet", "flag")]


async def test_reset_when_the_cursor_is_older_than_the_kept_window(
    make_store: StoreFactory,
) -> None:
    store = make_store(max_events_per_run=5)
    async with asyncio.timeout(10):
        await store.create_run("trim", principal=None)
        append_run(store, "trim", 1, 20)
        await store.flush("trim")
        info = await store.get_info("trim")
        assert info is not None
        assert (info.first_seq, info.last_seq) == (16, 20)

        sub = store.subscribe("trim", 3)
        batch = await sub.next_batch(1.0)
        assert batch is not None
        reset = batch[0].to_state()
        assert (reset.type, reset.seq, reset.first_seq) == (EventType.RESET, 15, 16)
        assert batch[0].sse.endswith(b"id: trim:15\n\n")
        assert [e.seq for e in batch[1:]] == [16, 17, 18, 19, 20]
        await sub.aclose()

        sub = store.subscribe("trim", 16)  # inside the window: no reset
        batch = await sub.next_batch(1.0)
        assert [e.seq for e in batch or []] == [17, 18, 19, 20]
        await sub.aclose()


async def test_writes_queued_beyond_the_bound_drop_the_oldest_with_a_reset(
    make_store: StoreFactory,
) -> None:
    store = make_store(max_events_per_run=5)
    async with asyncio.timeout(10):
        await store.create_run("burst", principal=None)
        append_run(store, "burst", 1, 50, done=True)  # no await: the writer cannot run meanwhile
        await store.flush("burst")
        events = await read_all(store, "burst")
        assert events[0].to_state().type is EventType.RESET
        assert events[0].to_state().first_seq == events[1].seq
        assert [e.seq for e in events[1:]] == list(range(48, 53))


async def test_append_never_waits_on_a_paused_redis_and_batches_what_piles_up(
    make_store: StoreFactory, redis_server: RedisServer
) -> None:
    store = make_store()
    async with asyncio.timeout(10):
        await store.create_run("paused", principal=None)
        append_run(store, "paused", 1, 1)
        await store.flush("paused")
        with redis_server.client() as client:
            calls_before = client.info("commandstats")["cmdstat_evalsha"]["calls"]
            client.execute_command("CLIENT", "PAUSE", 400, "ALL")
        slowest = 0.0
        for seq in range(2, 102):
            started = time.perf_counter()
            append_run(store, "paused", seq, seq)
            slowest = max(slowest, time.perf_counter() - started)
            if seq % 10 == 0:
                await asyncio.sleep(0.02)  # the writer runs meanwhile: its first write is held
        assert slowest < 0.05, slowest
        await store.flush("paused")
        with redis_server.client() as client:
            calls = client.info("commandstats")["cmdstat_evalsha"]["calls"] - calls_before
        assert calls < 10, calls  # 100 events, a few script calls
        store.append(state("paused", 102, EventType.DONE, status=RunStatus.COMPLETED))
        assert [e.seq for e in await read_all(store, "paused")] == list(range(1, 103))


async def test_scripts_flushed_from_redis_are_loaded_again(
    make_store: StoreFactory, redis_server: RedisServer
) -> None:
    store = make_store()
    async with asyncio.timeout(10):
        await store.create_run("flushed", principal=None)
        append_run(store, "flushed", 1, 3)
        await store.flush("flushed")
        with redis_server.client() as client:
            client.script_flush()
        append_run(store, "flushed", 4, 6)
        await store.flush("flushed")
        with redis_server.client() as client:
            client.script_flush()
        assert await store.add_watcher("flushed", 1) == 1
        store.append(state("flushed", 7, EventType.DONE, status=RunStatus.COMPLETED))
        assert [e.seq for e in await read_all(store, "flushed")] == list(range(1, 8))


async def test_the_shared_reader_reconnects_without_losing_events(
    make_store: StoreFactory, redis_server: RedisServer
) -> None:
    store = make_store()
    async with asyncio.timeout(10):
        await store.create_run("cut", principal=None)
        sub = store.subscribe("cut", 0)
        assert await sub.next_batch(0.1) == []
        with redis_server.client() as client:
            blocked = [c for c in client.client_list() if c["cmd"] == "xread"]
            assert len(blocked) == 1
            client.client_kill_filter(_id=blocked[0]["id"])
        append_run(store, "cut", 1, 5)
        got: list[int] = []
        while len(got) < 5:
            batch = await sub.next_batch(2.0)
            assert batch, "no events after the reader's connection was cut"
            got.extend(e.seq for e in batch)
        assert got == [1, 2, 3, 4, 5]
        await sub.aclose()


async def test_retention_expires_finished_runs_and_leases_keep_running_ones(
    make_store: StoreFactory, redis_server: RedisServer, prefix: str
) -> None:
    store = make_store(retention=0.3, lease_seconds=0.2)
    async with asyncio.timeout(10):
        await store.create_run("brief", principal=None)
        await store.create_run("long", principal=None)
        append_run(store, "brief", 1, 3, done=True)
        append_run(store, "long", 1, 3)
        await store.flush("brief")
        await store.flush("long")
        assert await store.get_info("brief") is not None
        await asyncio.sleep(1.2)  # past the lifetime of an unrenewed "long" (0.9 s)
        assert await store.get_info("brief") is None
        assert await read_all(store, "brief") == []
        with redis_server.client() as client:
            assert not client.exists(f"{prefix}run:brief", f"{prefix}meta:brief")
            assert client.pttl(f"{prefix}lease:long") > 0
        info = await store.get_info("long")
        assert info is not None
        assert info.last_seq == 3
        assert not info.finished


async def test_500_subscriptions_share_few_connections(
    make_store: StoreFactory, redis_server: RedisServer
) -> None:
    store = make_store()
    n_subs, n_events = 500, 40
    async with asyncio.timeout(20):
        await store.create_run("crowd", principal=None)
        await store.create_run("other", principal=None)
        append_run(store, "crowd", 1, 2)
        await store.flush("crowd")

        async def watch(run_id: str, after: int) -> list[int]:
            sub = store.subscribe(run_id, after)
            seqs: list[int] = []
            while (batch := await sub.next_batch(5.0)) is not None:
                seqs.extend(e.seq for e in batch)
            await sub.aclose()
            return seqs

        tasks = [
            asyncio.create_task(watch("crowd", i % 3) if i % 10 else watch("other", 0))
            for i in range(n_subs)
        ]
        await asyncio.sleep(0.3)
        peak = 0
        for seq in range(3, n_events + 1):
            append_run(store, "crowd", seq, seq)
            append_run(store, "other", seq - 2, seq - 2)
            await asyncio.sleep(0.005)
            if seq % 10 == 0:
                peak = max(peak, await asyncio.to_thread(redis_server.connected_clients))
        store.append(state("crowd", n_events + 1, EventType.DONE, status=RunStatus.COMPLETED))
        store.append(state("other", n_events - 1, EventType.DONE, status=RunStatus.COMPLETED))
        results = await asyncio.gather(*tasks)
        for i, seqs in enumerate(results):
            first, last = (i % 3 + 1, n_events + 1) if i % 10 else (1, n_events - 1)
            assert seqs == list(range(first, last + 1)), i
        # the command pool, the shared blocking reader and the cancel channel; nothing per reader
        assert 0 < peak <= store.max_connections + 2 < 20, peak


async def test_a_slow_reader_falls_back_to_its_cursor(make_store: StoreFactory) -> None:
    store = make_store(max_watcher_queue=4)
    async with asyncio.timeout(10):
        await store.create_run("slow", principal=None)
        fast = store.subscribe("slow", 0)
        slow = store.subscribe("slow", 0)
        assert await fast.next_batch(0.05) == []
        assert await slow.next_batch(0.05) == []
        fast_seen: list[int] = []
        for seq in range(1, 101):
            append_run(store, "slow", seq, seq)
            if seq % 10 == 0:
                await store.flush("slow")
                while not fast_seen or fast_seen[-1] < seq:
                    fast_seen.extend(e.seq for e in await fast.next_batch(1.0) or [])
        store.append(state("slow", 101, EventType.DONE, status=RunStatus.COMPLETED))
        slow_seen: list[int] = []
        while (batch := await slow.next_batch(1.0)) is not None:
            slow_seen.extend(e.seq for e in batch)
        assert slow_seen == list(range(1, 102))
        assert fast_seen == list(range(1, 101))
        await fast.aclose()
        await slow.aclose()


_OWNER = """
import asyncio, sys
from fastapi_ikstream import EventType, RunState, RunStatus
from fastapi_ikstream.redis import RedisRunStore

async def main():
    url, prefix, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
    store = RedisRunStore(url, prefix=prefix, lease_seconds=0.5)
    for run_id in runs:
        await store.create_run(run_id, principal=None)
        for seq, kind, status in ((1, EventType.RUN, RunStatus.RECEIVED),
                                  (2, EventType.PROGRESS, RunStatus.RUNNING)):
            store.append(RunState(type=kind, run_id=run_id, seq=seq, status=status))
        await store.flush(run_id)
        await store.add_watcher(run_id, 1)
    print("ready", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def start_owner(redis_server: RedisServer, prefix: str, *runs: str) -> subprocess.Popen[str]:
    """A worker process that owns ``runs`` (two events each) until it is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", _OWNER, redis_server.url, prefix, *runs],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.strip() == "ready", line
    return process


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(5)
    assert process.stdout is not None
    process.stdout.close()


@pytest.mark.parametrize(
    "sweep_interval",
    [pytest.param(0.25, id="found-by-the-sweeper"), pytest.param(60.0, id="found-by-the-reader")],
)
async def test_kill_9_of_the_owner_ends_its_run_as_orphaned(
    make_store: StoreFactory, redis_server: RedisServer, prefix: str, sweep_interval: float
) -> None:
    owner = await asyncio.to_thread(start_owner, redis_server, prefix, "victim")
    try:
        store = make_store(lease_seconds=0.5, sweep_interval=sweep_interval)
        async with asyncio.timeout(10):
            sub = store.subscribe("victim", 0)
            assert [e.seq for e in await sub.next_batch(1.0) or []] == [1, 2]
            assert await sub.next_batch(0.6) == []  # the owner is alive: its lease holds
            kill(owner)
            killed = time.monotonic()
            events: list[StoredEvent] = []
            while (batch := await sub.next_batch(None)) is not None:  # checks every lease
                events.extend(batch)
            elapsed = time.monotonic() - killed
            assert [e.type for e in events] == ["failed", "done"]
            failed = events[0].to_state()
            assert failed.seq == 3
            assert failed.status is RunStatus.FAILED
            assert failed.error is not None
            assert (failed.error.code, failed.error.message) == ("orphaned", ORPHANED_MESSAGE)
            assert events[1].to_state().status is RunStatus.FAILED
            assert elapsed < 0.5 + 0.25 + 1.0, elapsed
            info = await store.get_info("victim")
            assert info is not None
            assert info.finished
            assert info.status is RunStatus.FAILED
    finally:
        if owner.poll() is None:
            kill(owner)


async def test_concurrent_sweepers_end_an_orphan_once(
    make_store: StoreFactory, redis_server: RedisServer, prefix: str
) -> None:
    runs = [f"o{i}" for i in range(5)]
    owner = await asyncio.to_thread(start_owner, redis_server, prefix, *runs)
    sweepers = [make_store(lease_seconds=0.5, sweep_interval=60) for _ in range(4)]
    async with asyncio.timeout(10):
        try:
            for sweeper in sweepers:
                await sweeper.start()
            assert sum([await s.sweep() for s in sweepers]) == 0  # the owner renews its leases
            assert await sweepers[0].add_watcher("o0", 1) == 2  # a reader here, one on the owner
        finally:
            kill(owner)
        await asyncio.sleep(0.6)  # the leases (0.5 s) lapse
        assert await sweepers[0].add_watcher("o0", 0) == 1  # the dead worker's no longer counts
        counts = await asyncio.gather(*(s.sweep() for s in sweepers for _ in range(3)))
        assert sum(counts) == len(runs)
        for run_id in runs:
            events = await read_all(sweepers[0], run_id)
            assert [(e.seq, e.type) for e in events] == [
                (1, "run"),
                (2, "progress"),
                (3, "failed"),
                (4, "done"),
            ]
        assert sum(await asyncio.gather(*(s.sweep() for s in sweepers))) == 0


async def test_store_errors_and_guards(make_store: StoreFactory) -> None:
    store = make_store()
    async with asyncio.timeout(10):
        await store.create_run("g", principal=None)
        with pytest.raises(StoreError):
            await store.create_run("g", principal=None)
        other = make_store()
        with pytest.raises(StoreError):
            await other.create_run("g", principal=None)  # exists in Redis
        with pytest.raises(RunNotFoundError):
            other.append(state("g", 1, EventType.RUN))  # created by another worker
        with pytest.raises(ValueError, match="does not follow"):
            store.append(state("g", 2))
        append_run(store, "g", 1, 1, done=True)
        with pytest.raises(ValueError, match="done"):
            store.append(state("g", 4))
        await store.flush("g")
        await store.flush("never-created")


async def test_closing_is_prompt_and_ends_waiting_readers(make_store: StoreFactory) -> None:
    store = make_store()
    async with asyncio.timeout(5):
        await store.create_run("open", principal=None)
        append_run(store, "open", 1, 2)
        sub = store.subscribe("open", 0)
        assert [e.seq for e in await sub.next_batch(1.0) or []] == [1, 2]
        waiting = asyncio.create_task(sub.next_batch(None))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await store.aclose()
        assert await waiting is None
        assert time.monotonic() - started < 1.0


async def test_unreachable_redis_is_a_store_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = sock.getsockname()[1]
        store = RedisRunStore(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=1)
        async with asyncio.timeout(10):
            with pytest.raises(StoreUnavailableError) as created:
                await store.create_run("x", principal=None)
            with pytest.raises(StoreUnavailableError) as read:
                await store.get_info("x")
        for error in (created.value, read.value):  # the public message names no address
            assert isinstance(error, StoreError)
            assert str(port) not in str(error)
            assert "127.0.0.1" not in str(error)


def test_import_without_redis_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "try:\n"
        "    import fastapi_ikstream.redis\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.startswith(MissingExtraError.__name__), out.stderr
    assert 'pip install "fastapi-ikstream[redis]"' in out.stdout


async def test_retention_is_bounded_in_bytes_and_the_end_always_stays(
    make_store: StoreFactory,
) -> None:
    store = make_store(max_bytes_per_run=20_000)
    async with asyncio.timeout(20):
        await store.create_run("big", principal=None)
        log = [{"ts": 1.0, "message": "x" * 1000}]
        store.append(state("big", 1, EventType.RUN, status=RunStatus.RECEIVED))
        for seq in range(2, 200):
            store.append(state("big", seq, logs=log))
        store.append(state("big", 200, EventType.RESULT, status=RunStatus.COMPLETED, results=[]))
        store.append(state("big", 201, EventType.DONE, status=RunStatus.COMPLETED))
        await store.flush("big")
        info = await store.get_info("big")
        assert info is not None
        assert info.finished
        events = await read_all(store, "big")
        kept = [e for e in events if e.type != "reset"]
        assert events[0].type == "reset"  # what was trimmed is said, never skipped silently
        assert sum(len(e.data) for e in kept) <= 20_000
        assert [e.seq for e in kept] == list(range(info.first_seq, 202))
        assert [e.type for e in kept[-2:]] == ["result", "done"]


async def test_a_reader_catching_up_gets_bounded_batches(make_store: StoreFactory) -> None:
    store = make_store()
    async with asyncio.timeout(20):
        await store.create_run("wide", principal=None)
        log = [{"ts": 1.0, "message": "y" * 10_000}]
        store.append(state("wide", 1, EventType.RUN, status=RunStatus.RECEIVED))
        for seq in range(2, 60):
            store.append(state("wide", seq, logs=log))
        await store.flush("wide")
        sub = store.subscribe("wide", 0)
        sizes = []
        seen = 0
        while seen < 59:
            batch = await sub.next_batch(2.0)
            assert batch
            sizes.append(sum(len(e.data) for e in batch))
            seen = batch[-1].seq
        await sub.aclose()
        assert len(sizes) > 1
        assert max(sizes) < 64 * 1024 + 11_000  # one batch: about 64 KiB, one event beyond


async def test_a_cursor_past_the_end_gets_a_reset(make_store: StoreFactory) -> None:
    store = make_store()
    async with asyncio.timeout(20):
        await store.create_run("short", principal=None)
        append_run(store, "short", 1, 5)
        await store.flush("short")
        sub = store.subscribe("short", 50)
        batch = await sub.next_batch(2.0)
        await sub.aclose()
        assert batch is not None
        assert batch[0].type == "reset"
        assert [e.seq for e in batch[1:]] == [1, 2, 3, 4, 5]
