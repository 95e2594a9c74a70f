"""``create_router(on_usage=...)``: one usage record per run, however it ends (real uvicorn)."""

from __future__ import annotations

import asyncio
import signal
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import serve
from fastapi import FastAPI
from lifecycle_support import Job, Modes, bearer, eventually, jwt_auth
from redis_server import run_redis_server
from stream_support import Received, read_stream
from test_redis_workers import start_worker

from fastapi_ikstream import create_router
from fastapi_ikstream.metrics import PrometheusMetrics
from fastapi_ikstream.redis import RedisRunStore
from fastapi_ikstream.routing import StreamRouter
from fastapi_ikstream.testing import RecordingUsage
from fastapi_ikstream.usage import UsageRecord

OWNER = "jwt:|alice"
"""The owner of alice's runs (a JWT without issuer)."""

RETRY_LINE = b"retry: 50\n"
"""The hint a stream closed by a shutdown ends with (``retry=50``)."""


class Gated:
    """One update, then the result once the test opens ``gate`` (readers join meanwhile)."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def open_run(self, inputs: Any, parameters: Mapping[str, Any]) -> Any:
        return self._run()

    async def _run(self) -> AsyncIterator[dict[str, Any]]:
        yield {"state": "STARTED", "progress": {"current": 1, "total": 2}}
        await asyncio.to_thread(self.gate.wait, 10)
        yield {"results": [{"DATA_DICT": {"ok": True}}]}


def usage_app(usage: RecordingUsage, deployment: Any = None, **options: Any) -> StreamRouter:
    """A router for ``/api/gen`` with JWT auth, no keep-alives, a short grace and drain."""
    settings: dict[str, Any] = {
        "path": "/gen",
        "request_model": Job,
        "auth": jwt_auth(),
        "on_usage": usage,
        "keep_alive": 0,
        "retry": 50,
        "reconnect_grace": 0.2,
        "drain_timeout": 0.2,
        **options,
    }
    return create_router(deployment or Modes(), **settings)


def app_of(router: StreamRouter) -> FastAPI:
    app = FastAPI()
    app.include_router(router, prefix="/api")
    return app


def client_for(url: str, **options: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=10, headers=bearer("alice"), **options)


def only_record(usage: RecordingUsage, run_id: str | None) -> UsageRecord:
    """The one record of ``run_id``; no other run was reported."""
    assert run_id is not None
    assert [record.run_id for record in usage.records] == [run_id]
    return usage.records[0]


def assert_sent_exactly(record: UsageRecord, *streams: Received) -> None:
    assert record.readers == len(streams)
    assert record.events_sent == sum(len(stream.events) for stream in streams)
    assert record.bytes_sent == sum(len(stream.body) for stream in streams)


async def test_a_completed_run_counts_every_reader_and_what_each_was_sent() -> None:
    usage, gated = RecordingUsage(), Gated()
    router = usage_app(usage, gated)
    with serve(app_of(router)) as server:
        async with client_for(server.url) as client, asyncio.timeout(20):
            first_seen = asyncio.Event()
            started: list[str | None] = []

            async def on_event(received: Received) -> None:
                if received.kinds[-1] == "progress":
                    started.append(received.run_id)
                    first_seen.set()

            first = asyncio.create_task(
                read_stream(client, "POST", "/api/gen/stream", json={}, on_event=on_event)
            )
            await first_seen.wait()
            joined = asyncio.Event()

            async def joined_at_progress(received: Received) -> None:
                if received.kinds[-1] == "progress":
                    joined.set()

            run_id = started[0]
            url = f"/api/gen/runs/{run_id}/events"
            second = asyncio.create_task(
                read_stream(client, "GET", url, on_event=joined_at_progress)
            )
            await joined.wait()
            gated.gate.set()
            streams = await asyncio.gather(first, second)
            assert await usage.wait_for(1)
    record = only_record(usage, run_id)
    assert streams[0].kinds[-2:] == streams[1].kinds[-2:] == ["result", "done"]
    assert (record.status.value, record.error_code) == ("completed", None)
    assert (record.principal, record.router) == (OWNER, "gen")
    assert_sent_exactly(record, *streams)
    assert record.ended_at >= record.started_at


async def test_a_failed_deployment_is_reported_with_its_code() -> None:
    usage = RecordingUsage()
    with serve(app_of(usage_app(usage))) as server:
        async with client_for(server.url) as client, asyncio.timeout(20):
            failed = await read_stream(client, "POST", "/api/gen/stream", json={"mode": "fail"})
            refused = await read_stream(
                client, "POST", "/api/gen/stream", json={"mode": "fail_first"}
            )
            # a deployment that cannot even be opened starts no run: nothing to bill
            unreachable = await client.post("/api/gen/stream", json={"mode": "open_error"})
            assert unreachable.status_code >= 500
            assert await usage.wait_for(2)
    assert failed.kinds[-2:] == refused.kinds[-2:] == ["failed", "done"]
    assert len(usage.records) == 2
    for stream, code in ((failed, "broke"), (refused, "refused")):
        assert stream.run_id is not None
        [record] = usage.for_run(stream.run_id)
        assert (record.status.value, record.error_code, record.principal) == (
            "failed",
            code,
            OWNER,
        )
        assert_sent_exactly(record, stream)


async def test_a_run_cancelled_by_delete() -> None:
    usage = RecordingUsage()
    with serve(app_of(usage_app(usage))) as server:
        async with client_for(server.url) as client, asyncio.timeout(20):
            created = await client.post("/api/gen/runs", json={"mode": "slow"})
            assert created.status_code == 201, created.text
            run_id = created.json()["run_id"]

            async def cancel_at_progress(received: Received) -> None:
                if received.kinds[-1] == "progress" and received.kinds.count("progress") == 1:
                    answer = await client.delete(f"/api/gen/runs/{run_id}")
                    assert answer.status_code == 202

            stream = await read_stream(
                client, "GET", f"/api/gen/runs/{run_id}/events", on_event=cancel_at_progress
            )
            assert await usage.wait_for(1)
    assert stream.kinds[-2:] == ["cancelled", "done"]
    record = only_record(usage, run_id)
    assert (record.status.value, record.error_code, record.principal) == (
        "cancelled",
        "cancelled",
        OWNER,
    )
    assert_sent_exactly(record, stream)


async def test_a_client_drop_cancels_the_run_after_the_grace() -> None:
    usage = RecordingUsage()
    with serve(app_of(usage_app(usage))) as server:
        async with client_for(server.url) as client, asyncio.timeout(20):
            dropped = await read_stream(
                client, "POST", "/api/gen/stream", json={"mode": "slow"}, stop_after=3
            )
            assert await usage.wait_for(1, timeout=10)
    record = only_record(usage, dropped.run_id)
    assert (record.status.value, record.error_code, record.principal) == (
        "cancelled",
        "cancelled",
        OWNER,
    )
    assert record.readers == 1
    # the server may have written more than the client read before it hung up
    assert record.events_sent >= len(dropped.events)
    assert record.bytes_sent >= len(dropped.body)


async def test_a_run_past_its_timeout() -> None:
    usage = RecordingUsage()
    with serve(app_of(usage_app(usage, timeout=0.3))) as server:
        async with client_for(server.url) as client, asyncio.timeout(20):
            stream = await read_stream(client, "POST", "/api/gen/stream", json={"mode": "slow"})
            assert await usage.wait_for(1)
    assert stream.kinds[-2:] == ["failed", "done"]
    record = only_record(usage, stream.run_id)
    assert (record.status.value, record.error_code) == ("failed", "timeout")
    assert_sent_exactly(record, stream)


async def test_a_run_ended_by_the_server_shutting_down() -> None:
    usage = RecordingUsage()
    router = usage_app(usage)
    with serve(app_of(router)) as server:
        async with client_for(server.url) as client, asyncio.timeout(20):
            created = await client.post("/api/gen/runs", json={"mode": "slow"})
            run_id = created.json()["run_id"]

            async def shut_down_at_progress(received: Received) -> None:
                if received.kinds[-1] == "progress" and received.kinds.count("progress") == 1:
                    router.manager.begin_shutdown()

            stream = await read_stream(
                client, "GET", f"/api/gen/runs/{run_id}/events", on_event=shut_down_at_progress
            )
    # the server has stopped: its lifespan delivered what it owed
    record = only_record(usage, run_id)
    assert "done" not in stream.kinds  # the stream was closed before the run ended
    assert (record.status.value, record.error_code, record.principal) == (
        "cancelled",
        "cancelled",
        OWNER,
    )
    assert record.readers == 1
    assert record.events_sent == len(stream.events)
    assert stream.body.endswith(RETRY_LINE)  # the reconnection hint carries no event
    assert record.bytes_sent == len(stream.body) - len(RETRY_LINE)


# -- on a shared Redis store ---------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with run_redis_server() as server:
        yield server.url


def redis_router(
    usage: RecordingUsage, url: str, prefix: str, metrics: PrometheusMetrics | None = None
) -> StreamRouter:
    store = RedisRunStore(url, prefix=prefix, lease_seconds=0.5, sweep_interval=0.25)
    return usage_app(usage, store=store, on_disconnect="continue", metrics=metrics)


def all_records(*usages: RecordingUsage) -> list[UsageRecord]:
    return [record for usage in usages for record in usage.records]


def finished_runs(metrics: PrometheusMetrics, status: str) -> float:
    labels = {"router": "gen", "status": status}
    return metrics.registry.get_sample_value("ikstream_runs_finished_total", labels) or 0.0


async def usage_kept(url: str, prefix: str, run_id: str) -> None:
    """Wait until the owner has kept the run's usage in its meta data (before killing it)."""
    store = RedisRunStore(url, prefix=prefix)
    try:
        for _ in range(500):  # 10 s at most
            info = await store.get_info(run_id)
            if info is not None and info.usage:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the owner did not keep the run's usage")
    finally:
        await store.aclose()


@pytest.mark.redis
async def test_an_orphaned_run_is_reported_once_by_a_surviving_worker(redis_url: str) -> None:
    prefix = f"u{uuid.uuid4().hex[:8]}:"
    usages = (RecordingUsage(), RecordingUsage())
    metrics = (PrometheusMetrics(), PrometheusMetrics())
    with (
        serve(app_of(redis_router(usages[0], redis_url, prefix, metrics[0]))) as a,
        serve(app_of(redis_router(usages[1], redis_url, prefix, metrics[1]))),
    ):
        owner = await asyncio.to_thread(start_worker, redis_url, prefix, metered=True)
        try:
            async with client_for(a.url) as client, asyncio.timeout(30):
                before = datetime.now(UTC)
                created = await client.post(
                    owner.url + "/api/gen/runs", json={"steps": 1000, "delay": 0.02}
                )
                run_id = created.json()["run_id"]
                url = f"{a.url}/api/gen/runs/{run_id}/events"
                await read_stream(client, "GET", url, stop_after=2)  # it is running
                await usage_kept(redis_url, prefix, run_id)
                killed = datetime.now(UTC)
                owner.stop(signal.SIGKILL)
                await eventually(lambda: all_records(*usages), timeout=10, what="the orphan")
        finally:
            owner.stop(signal.SIGKILL)
    [record] = all_records(*usages)  # the two survivors' servers have stopped
    assert record.run_id == run_id
    assert (record.status.value, record.error_code) == ("failed", "orphaned")
    assert record.principal is None  # the owner ran without auth
    # the owner kept its router's and deployment's names and the usage in the store
    assert (record.router, record.deployment) == ("gen", "slow")
    assert record.usage == {"gpu_seconds": 1.5, "model": "slow-1"}
    # its start was kept in the store: the run's seconds run from it to the sweep
    second = timedelta(seconds=1)  # Redis's clock and this one are the same host's
    assert before - second <= record.started_at <= killed + second
    assert record.ended_at > killed - second
    assert record.run_seconds > 0
    # the worker that swept it counted it as a failed run, the other did not
    assert sorted(finished_runs(m, "failed") for m in metrics) == [0.0, 1.0]
    assert [finished_runs(m, "completed") for m in metrics] == [0.0, 0.0]


async def run_to_end(client: httpx.AsyncClient, url: str) -> str:
    answer = await client.post(url + "/api/gen", json={"steps": 1})
    assert answer.status_code == 200, answer.text
    run_id = answer.json()["run_id"]
    assert isinstance(run_id, str)
    return run_id


async def cancelled_elsewhere(client: httpx.AsyncClient, owner: str, other: str) -> str:
    created = await client.post(owner + "/api/gen/runs", json={"mode": "slow"})
    run_id = created.json()["run_id"]
    assert isinstance(run_id, str)
    assert (await client.delete(f"{other}/api/gen/runs/{run_id}")).status_code == 202
    await read_stream(client, "GET", f"{other}/api/gen/runs/{run_id}/events")
    return run_id


WARM = (0, 1, 50, 51)


@pytest.mark.redis
async def test_two_workers_on_one_redis_report_each_run_once(redis_url: str) -> None:
    prefix = f"u{uuid.uuid4().hex[:8]}:"
    usages = (RecordingUsage(), RecordingUsage())
    started: tuple[list[str], list[str]] = ([], [])
    with (
        serve(app_of(redis_router(usages[0], redis_url, prefix))) as a,
        serve(app_of(redis_router(usages[1], redis_url, prefix))) as b,
    ):
        urls = (a.url, b.url)
        gate = asyncio.Semaphore(32)

        async def one(index: int) -> None:
            mine, other = index % 2, 1 - index % 2
            async with gate:
                if index % 50 == 0:  # cancelled, and read, through the other worker
                    run_id = await cancelled_elsewhere(client, urls[mine], urls[other])
                else:
                    run_id = await run_to_end(client, urls[mine])
            started[mine].append(run_id)

        limits = httpx.Limits(max_connections=64)
        async with client_for(a.url, limits=limits) as client, asyncio.timeout(120):
            # The two servers share this process: FastAPI builds a route's dependencies on
            # its first request, and two threads doing so at once can clash in pydantic.
            # Worker processes never share that; one request of each kind warms them up.
            for index in WARM:
                await one(index)
            await asyncio.gather(*(one(index) for index in range(1000) if index not in WARM))
            await eventually(lambda: len(all_records(*usages)) >= 1000, timeout=30, what="records")
    records = all_records(*usages)
    assert len(records) == 1000
    assert len({record.run_id for record in records}) == 1000
    for usage, runs in zip(usages, started, strict=True):
        assert sorted(record.run_id for record in usage.records) == sorted(runs)
    cancelled = [record for record in records if record.status.value == "cancelled"]
    assert len(cancelled) == 20
    assert {record.principal for record in records} == {OWNER}
    assert {record.deployment for record in records} == {"Modes"}
