"""Two uvicorn worker processes sharing runs through one redis-server."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from httpx_sse import aconnect_sse
from redis_server import RedisServer, run_redis_server

pytestmark = pytest.mark.redis

_WORKER = """
import asyncio, sys

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from fastapi_ikstream import create_router
from fastapi_ikstream.redis import RedisRunStore


class Job(BaseModel):
    steps: int = 10
    delay: float = 0.05


async def slow(inputs, parameters, on_progress):
    on_progress(usage={"gpu_seconds": 1.5, "model": "slow-1"})  # a metered router bills it
    for step in range(inputs.steps):
        on_progress(state="STARTED", progress={"current": step + 1, "total": inputs.steps})
        await asyncio.sleep(inputs.delay)
    return [{"DATA_DICT": {"steps": inputs.steps}}]


url, prefix, port, metered = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
store = RedisRunStore(url, prefix=prefix, lease_seconds=0.5, sweep_interval=0.25)
app = FastAPI()
app.include_router(
    create_router(
        slow, path="/gen", request_model=Job, store=store, on_disconnect="continue", keep_alive=0.5,
        on_usage=(lambda record: None) if metered else None,
    ),
    prefix="/api",
)
limited_store = RedisRunStore(url, prefix=prefix, lease_seconds=0.5, sweep_interval=0.25)
app.include_router(
    create_router(
        slow, path="/limited", request_model=Job, store=limited_store, rate_limit="5/minute",
        rate_limit_storage=url, max_concurrent_runs=1, on_disconnect="continue",
    ),
    prefix="/api",
)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    url: str

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_worker(redis_url: str, prefix: str, *, metered: bool = False) -> Worker:
    """A worker process; ``metered`` gives its ``/gen`` router an ``on_usage`` (a no-op)."""
    port = _free_port()
    args = [redis_url, prefix, str(port), "1" if metered else "0"]
    process = subprocess.Popen([sys.executable, "-c", _WORKER, *args])
    worker = Worker(process, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited with code {process.returncode}")
        try:
            if httpx.get(worker.url + "/openapi.json", timeout=1).status_code == 200:
                return worker
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            worker.stop(signal.SIGKILL)
            raise RuntimeError("the worker did not start")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with run_redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"w{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="module")
def workers(redis_server: RedisServer, prefix: str) -> Iterator[tuple[Worker, Worker]]:
    started: list[Worker] = []
    try:
        for _ in range(2):
            started.append(start_worker(redis_server.url, prefix))
        yield started[0], started[1]
    finally:
        for worker in started:
            worker.stop()


async def start_run(client: httpx.AsyncClient, worker: Worker, **job: object) -> str:
    response = await client.post(worker.url + "/api/gen/runs", json=job)
    assert response.status_code == 201, response.text
    run_id = response.json()["run_id"]
    assert isinstance(run_id, str)
    return run_id


async def read_events(
    client: httpx.AsyncClient,
    worker: Worker,
    run_id: str,
    last_event_id: str | None = None,
    stop_after: int | None = None,
) -> list[tuple[int, str]]:
    """Events as (seq, type) from a worker; stops after ``stop_after`` events (a drop)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    url = f"{worker.url}/api/gen/runs/{run_id}/events"
    events: list[tuple[int, str]] = []
    async with aconnect_sse(client, "GET", url, headers=headers) as source:
        assert source.response.status_code == 200
        async for sse in source.aiter_sse():
            data = sse.json()
            assert sse.id == f"{run_id}:{data['seq']}"
            assert sse.event == data["type"]
            events.append((data["seq"], data["type"]))
            if sse.event == "done" or (stop_after is not None and len(events) >= stop_after):
                break
    return events


async def test_start_on_one_worker_resume_on_the_other(workers: tuple[Worker, Worker]) -> None:
    a, b = workers
    async with httpx.AsyncClient(timeout=10) as client, asyncio.timeout(20):
        run_id = await start_run(client, a, steps=30, delay=0.02)
        first = await read_events(client, a, run_id, stop_after=7)
        assert [seq for seq, _ in first] == list(range(1, 8))
        rest = await read_events(client, b, run_id, last_event_id=f"{run_id}:7")
        seqs = [seq for seq, _ in first + rest]
        assert seqs == list(range(1, len(seqs) + 1))
        assert [kind for _, kind in rest[-2:]] == ["result", "done"]
        assert len(seqs) == 1 + 30 + 2  # run, 30 progress, result, done

        again = await client.get(
            f"{b.url}/api/gen/runs/{run_id}/events",
            headers={"Last-Event-ID": f"{run_id}:{seqs[-1]}"},
        )
        assert again.status_code == 204
        state = await client.get(f"{b.url}/api/gen/runs/{run_id}")
        assert state.json()["finished"] is True


async def test_cancel_from_the_other_worker(workers: tuple[Worker, Worker]) -> None:
    a, b = workers
    async with httpx.AsyncClient(timeout=10) as client, asyncio.timeout(20):
        run_id = await start_run(client, a, steps=1000, delay=0.02)
        watched = asyncio.create_task(read_events(client, b, run_id))
        await asyncio.sleep(0.3)
        response = await client.delete(f"{b.url}/api/gen/runs/{run_id}")
        assert response.status_code == 202, response.text
        events = await watched
        assert [kind for _, kind in events[-2:]] == ["cancelled", "done"]
        seqs = [seq for seq, _ in events]
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(seqs) < 1000


async def test_kill_9_of_the_owning_worker_orphans_its_run(
    workers: tuple[Worker, Worker], redis_server: RedisServer, prefix: str
) -> None:
    _, b = workers
    owner = await asyncio.to_thread(start_worker, redis_server.url, prefix)
    try:
        async with httpx.AsyncClient(timeout=10) as client, asyncio.timeout(20):
            run_id = await start_run(client, owner, steps=1000, delay=0.02)
            watched = asyncio.create_task(read_events(client, b, run_id))
            await asyncio.sleep(0.3)
            owner.stop(signal.SIGKILL)
            killed = time.monotonic()
            events = await watched
            elapsed = time.monotonic() - killed
            assert [kind for _, kind in events[-2:]] == ["failed", "done"]
            seqs = [seq for seq, _ in events]
            assert seqs == list(range(1, len(seqs) + 1))
            assert elapsed < 0.5 + 0.25 + 1.5, elapsed
            state = await client.get(f"{b.url}/api/gen/runs/{run_id}")
            assert state.json()["latest"]["error"]["code"] == "orphaned"
    finally:
        owner.stop(signal.SIGKILL)


async def test_rate_limit_and_run_cap_hold_across_workers(
    workers: tuple[Worker, Worker],
) -> None:
    a, b = workers
    async with httpx.AsyncClient(timeout=10) as client:
        # one run at a time, whichever worker is asked
        first = await client.post(a.url + "/api/limited/runs", json={"steps": 40})
        assert first.status_code == 201, first.text
        refused = await client.post(b.url + "/api/limited/runs", json={"steps": 1})
        assert refused.status_code == 429
        assert "1" in str(refused.json()["detail"])
        cancel = await client.delete(a.url + first.json()["cancel_url"])
        assert cancel.status_code == 202
        for _ in range(200):  # the slot is freed once the cancelled run has ended
            state = await client.get(a.url + first.json()["state_url"])
            if state.json()["finished"]:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        # 5 a minute in all, counted across both workers: 2 hits were taken above
        responses = []
        for i in range(6):
            worker = (a, b)[i % 2]
            responses.append(await client.post(worker.url + "/api/limited", json={"steps": 1}))
        statuses = [response.status_code for response in responses]
        assert statuses == [200, 200, 200, 429, 429, 429], statuses
        for refused_by_rate in responses[3:]:
            assert int(refused_by_rate.headers["retry-after"]) >= 1
            assert refused_by_rate.headers["x-ratelimit-remaining"] == "0"
