"""Redis faults under a real uvicorn: redis-server killed by pid mid-run, then restarted.

Redis is killed under 200 open streams and kept down for 10 s. What is promised: no 500,
a 503 JSON with code ``store_unavailable`` and no address, every open stream ends within
5 s with a ``retry:`` hint (it does not end with ``done``, so clients reconnect), no
unhandled traceback in any log, and new runs succeed within 5 s of Redis's return,
without a restart. The server runs in its own process, as a deployment would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from apps.jobs import slow_job
from attack_kit import kill_redis, start_redis_on
from conftest import free_port, serve
from fastapi import FastAPI
from redis_server import RedisServer

from fastapi_ikstream import (
    EventType,
    RunState,
    RunStatus,
    StoreError,
    StoreUnavailableError,
    create_router,
)
from fastapi_ikstream.redis import RedisRunStore

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

STREAMS = 200
OUTAGE = 10.0  # seconds redis-server is down
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def redis_port() -> int:
    return free_port()


@pytest.fixture
def redis_server(redis_port: int) -> Iterator[RedisServer]:
    server = start_redis_on(redis_port)
    try:
        yield server
    finally:
        kill_redis(server)


def app_on(url: str) -> FastAPI:
    store = RedisRunStore(url, prefix=f"f{uuid.uuid4().hex[:8]}:")
    app = FastAPI()
    app.include_router(create_router(slow_job, path="/job", store=store, keep_alive=1.0))
    return app


def assert_store_unavailable(response: httpx.Response, port: int) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["detail"]["error"] == "store_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    everything = response.text + repr(dict(response.headers))
    assert str(port) not in everything
    assert "127.0.0.1" not in everything


async def stream_until_end(url: str, streaming: list[int]) -> tuple[bytes, float]:
    """Stream a long run; count in at its first progress event. Returns (bytes, end time).

    A plain socket, not httpx: 200 streams of 20 events/s each through a pure-Python HTTP
    parser would keep the test's own process behind the server, and the end it sees late.
    ``Connection: close`` makes the end of the response the end of the connection.
    """
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = b'{"parameters": {"steps": 400}}'
    writer.write(
        b"POST /job/stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    received = bytearray()
    counted = False
    try:
        while chunk := await reader.read(65536):
            received.extend(chunk)
            if not counted and b"event: progress" in received:
                counted = True
                streaming[0] += 1
    finally:
        writer.close()
    ended_at = time.monotonic()
    assert received.startswith(b"HTTP/1.1 200 "), bytes(received[:200])
    return bytes(received), ended_at


@contextlib.asynccontextmanager
async def fault_server(redis_url: str, log: Path) -> AsyncIterator[str]:
    """``tests/apps/redis_fault_app.py`` under uvicorn in its own process; yields its URL.

    Its stderr (uvicorn's and the package's log) goes to ``log``.
    """
    port = free_port()
    env = {
        **os.environ,
        "IKSTREAM_TEST_REDIS_URL": redis_url,
        "IKSTREAM_TEST_REDIS_PREFIX": f"f{uuid.uuid4().hex[:8]}:",
        "IKSTREAM_TEST_STREAMS": str(STREAMS),
    }
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "uvicorn", "tests.apps.redis_fault_app:app", "--host", "127.0.0.1"),
            *("--port", str(port), "--log-level", "warning"),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(timeout=5) as http, asyncio.timeout(20):
                while process.returncode is None:
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get(url + "/openapi.json")).status_code == 200:
                            break
                    await asyncio.sleep(0.05)
            assert process.returncode is None, "uvicorn exited; see its log: " + str(log)
            yield url
        finally:
            if process.returncode is None:
                process.terminate()
                await process.wait()


async def test_redis_killed_mid_run_then_restarted(
    redis_server: RedisServer, redis_port: int, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    async with fault_server(redis_server.url, log) as url:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with (
            httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http,
            asyncio.timeout(90),
        ):
            created = await http.post("/job/runs", json={"parameters": {"steps": 400}})
            assert created.status_code == 201
            run_id = created.json()["run_id"]
            streaming = [0]
            tasks = [asyncio.create_task(stream_until_end(url, streaming)) for _ in range(STREAMS)]
            while streaming[0] < STREAMS:  # noqa: ASYNC110 - a count, polled
                await asyncio.sleep(0.05)

            kill_redis(redis_server)
            killed_at = time.monotonic()
            results = await asyncio.gather(*tasks)
            ends = sorted(ended_at - killed_at for _, ended_at in results)
            print(f"{STREAMS} streams ended {ends[0]:.2f}-{ends[-1]:.2f} s after the kill")
            assert ends[-1] < 5.0
            for body, _ in results:
                tail = body.rsplit(b"\n\n", 1)[-1]  # the last chunk: "retry: 3000\n" and "0"
                assert b"retry: 3000\n" in tail, tail  # the hint, after the last event
                assert b"event: done" not in body

            for method, path in (
                ("GET", f"/job/runs/{run_id}"),
                ("DELETE", f"/job/runs/{run_id}"),
                ("GET", f"/job/runs/{run_id}/events"),
                ("POST", "/job/runs"),
                ("POST", "/job/stream"),
                ("POST", "/job"),
            ):
                kwargs: dict[str, Any] = {"json": {}} if method == "POST" else {}
                response = await http.request(method, path, **kwargs)
                assert_store_unavailable(response, redis_port)

            # Redis stays down for OUTAGE seconds in all, as a failover or a restart can
            await asyncio.sleep(max(0.0, killed_at + OUTAGE - time.monotonic()))
            response = await http.post("/job/stream", json={})
            assert_store_unavailable(response, redis_port)
            restarted = start_redis_on(redis_port)
            back_at = time.monotonic()
            try:
                while True:
                    again = await http.post("/job", json={"parameters": {"steps": 1}})
                    if again.status_code == 200:
                        break
                    assert_store_unavailable(again, redis_port)
                    assert time.monotonic() - back_at < 5.0
                    await asyncio.sleep(0.1)
                recovered = time.monotonic() - back_at
                print(f"a new run completed {recovered:.2f} s after Redis came back")
                assert again.json()["status"] == "completed"
                assert recovered < 5.0
            finally:
                kill_redis(restarted)
    server_log = log.read_text()
    assert "Traceback" not in server_log, server_log
    assert "ERROR" not in server_log, server_log  # the app logs with level names


# --- cursors at the edge of 64 bits, permanent errors -----------------------------------


def state(run_id: str, seq: int, type_: EventType = EventType.PROGRESS) -> RunState:
    status = RunStatus.RECEIVED if seq == 1 else RunStatus.RUNNING
    if type_ is EventType.DONE:
        status = RunStatus.COMPLETED
    return RunState(type=type_, run_id=run_id, seq=seq, status=status)


@pytest.fixture
async def store(redis_server: RedisServer) -> Any:
    made = RedisRunStore(redis_server.url, prefix=f"c{uuid.uuid4().hex[:8]}:")
    await made.start()
    yield made
    await made.aclose()


@pytest.mark.parametrize("cursor", [2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30])
async def test_a_huge_cursor_on_a_running_run_ends_with_the_run(
    store: RedisRunStore, cursor: int
) -> None:
    run_id = f"r_{uuid.uuid4().hex[:8]}"
    await store.create_run(run_id, principal=None)
    store.append(state(run_id, 1, EventType.RUN))
    await store.flush(run_id)
    subscription = store.subscribe(run_id, cursor)
    async with asyncio.timeout(10):
        first = await subscription.next_batch(0.3)
        assert first is not None
        # past the end of the run: a reset to what is kept, and no error either
        assert [(e.type, e.seq) for e in first] == [("reset", 0), ("run", 1)]
        store.append(state(run_id, 2))
        store.append(state(run_id, 3, EventType.DONE))
        await store.flush(run_id)
        rest: list[int] = []
        while (batch := await subscription.next_batch(0.3)) is not None:
            rest.extend(e.seq for e in batch)
        assert rest == [2, 3]  # and the read ends with the run
    await subscription.aclose()


async def test_a_permanent_redis_error_ends_the_read_at_once(store: RedisRunStore) -> None:
    run_id = f"r_{uuid.uuid4().hex[:8]}"
    await store.create_run(run_id, principal=None)
    store.append(state(run_id, 1, EventType.RUN))
    await store.flush(run_id)
    # the run's stream key now holds a string: every XRANGE answers WRONGTYPE
    await store.client.delete(f"{store.prefix}run:{run_id}")
    await store.client.set(f"{store.prefix}run:{run_id}", "not a stream")
    subscription = store.subscribe(run_id, 0)
    async with asyncio.timeout(5):
        with pytest.raises(StoreError) as refused:
            await subscription.next_batch(1.0)
    assert not isinstance(refused.value, StoreUnavailableError)
    assert "WRONGTYPE" not in str(refused.value)


async def test_huge_cursors_over_http_with_redis(redis_server: RedisServer) -> None:
    with serve(app_on(redis_server.url)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            created = await http.post("/job/runs", json={"parameters": {"steps": 10}})
            run_id = created.json()["run_id"]
            async with asyncio.timeout(15):
                huge = {"Last-Event-ID": f"{run_id}:{2**64 - 1}"}
                response = await http.get(f"/job/runs/{run_id}/events", headers=huge)
                # not a cursor the server sent: read as malformed, the run is sent whole
                assert response.status_code == 200
                assert response.text.count("event: done") == 1
                too_far = await http.get(
                    f"/job/runs/{run_id}/events", params={"after_seq": 2**64 - 1}
                )
                assert too_far.status_code == 422


# --- a store outage as the reconnect grace ends --------------------------------------------


class Seen(logging.Handler):
    """Sets ``event`` when a record whose message contains ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


@pytest.mark.parametrize(
    ("stopped_at", "failure"),
    [
        ("the grace", "the store could not cancel an unwatched run"),
        ("the drop", "the store could not count a reader out"),
    ],
)
async def test_an_unwatched_run_is_cancelled_once_redis_answers_again(
    redis_server: RedisServer, stopped_at: str, failure: str
) -> None:
    """Redis stops answering (SIGSTOP: its data stays) through a dropped run's grace.

    Stopped before the client drops, the reader cannot be counted out; stopped after,
    the cancel at the grace's end fails. Either way the run must not go on unwatched:
    once Redis answers again (SIGCONT), the count is written again, the cancel tried
    again, and the run ends ``cancelled``.
    """
    store = RedisRunStore(redis_server.url, prefix=f"g{uuid.uuid4().hex[:8]}:", socket_timeout=0.5)
    app = FastAPI()
    app.include_router(
        create_router(slow_job, path="/job", store=store, reconnect_grace=1.0, retry=500)
    )
    admin = aioredis.from_url(redis_server.url, decode_responses=True)
    seen = Seen(failure)
    logging.getLogger("fastapi_ikstream").addHandler(seen)
    try:
        with serve(app) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                job = {"parameters": {"steps": 2000}}  # 100 s: it ends only if cancelled
                async with http.stream("POST", "/job/stream", json=job) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("id: "):
                            run_id = line[4:].rsplit(":", 1)[0]
                            break  # the client drops after the first event
                    if stopped_at == "the drop":
                        redis_server.process.send_signal(signal.SIGSTOP)
                if stopped_at == "the grace":
                    meta = f"{store.prefix}meta:{run_id}"
                    async with asyncio.timeout(10):
                        while await admin.hget(meta, "watchers") != "0":  # noqa: ASYNC110
                            await asyncio.sleep(0.02)
                    redis_server.process.send_signal(signal.SIGSTOP)
                try:
                    assert await asyncio.to_thread(seen.event.wait, 15)
                finally:
                    redis_server.process.send_signal(signal.SIGCONT)
                async with asyncio.timeout(15):
                    while True:
                        state = await http.get(f"/job/runs/{run_id}")
                        if state.status_code == 200 and state.json()["finished"]:
                            break
                        await asyncio.sleep(0.1)
                assert state.json()["status"] == "cancelled"
                assert await admin.hget(f"{store.prefix}meta:{run_id}", "watchers") == "0"
    finally:
        logging.getLogger("fastapi_ikstream").removeHandler(seen)
        await admin.aclose()
