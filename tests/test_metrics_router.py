"""``create_router(metrics=PrometheusMetrics())``: a scrape over HTTP matches what was done."""

from __future__ import annotations

import asyncio

import httpx
from conftest import serve
from fastapi import FastAPI
from lifecycle_support import Job, Modes, bearer, jwt_auth
from metrics_support import scrape_when_settled, value
from stream_support import Received, read_stream

from fastapi_ikstream import create_router
from fastapi_ikstream.metrics import PrometheusMetrics


def metered_app(metrics: PrometheusMetrics) -> FastAPI:
    router = create_router(
        Modes(),
        path="/gen",
        request_model=Job,
        auth=jwt_auth(),
        metrics=metrics,
        rate_limit="4/minute",
        keep_alive=0,
        retry=50,
        reconnect_grace=0.2,
    )
    app = FastAPI()
    app.include_router(router, prefix="/api")
    app.include_router(metrics.router())
    return app


async def cancelled_run(client: httpx.AsyncClient) -> Received:
    created = await client.post("/api/gen/runs", json={"mode": "slow"})
    assert created.status_code == 201, created.text
    run_id = created.json()["run_id"]

    async def cancel_at_progress(received: Received) -> None:
        if received.kinds[-1] == "progress" and received.kinds.count("progress") == 1:
            assert (await client.delete(f"/api/gen/runs/{run_id}")).status_code == 202

    return await read_stream(
        client, "GET", f"/api/gen/runs/{run_id}/events", on_event=cancel_at_progress
    )


async def resumed_run(client: httpx.AsyncClient) -> Received:
    created = await client.post("/api/gen/runs", json={"steps": 4})
    run_id = created.json()["run_id"]
    url = f"/api/gen/runs/{run_id}/events"
    return await read_stream(client, "GET", url, headers={"Last-Event-ID": f"{run_id}:2"})


async def test_the_scrape_counts_the_runs_streams_events_and_refusals() -> None:
    metrics = PrometheusMetrics()
    with serve(metered_app(metrics)) as server:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=10, headers=bearer("alice")) as client,
            asyncio.timeout(30),
        ):
            completed = await read_stream(client, "POST", "/api/gen/stream", json={"steps": 3})
            failed = await read_stream(client, "POST", "/api/gen/stream", json={"mode": "fail"})
            cancelled = await cancelled_run(client)
            resumed = await resumed_run(client)
            streams = (completed, failed, cancelled, resumed)
            assert [stream.kinds[-2] for stream in streams] == [
                "result",
                "failed",
                "cancelled",
                "result",
            ]
            assert resumed.events[0]["seq"] == 3
            refused = await client.post("/api/gen/stream", json={})  # the 5th run this minute
            assert refused.status_code == 429
            anonymous = await client.post("/api/gen/stream", json={}, headers={"authorization": ""})
            assert anonymous.status_code == 401

            samples = await scrape_when_settled(client)
    assert value(samples, "ikstream_runs_started_total") == 4
    finished = {
        status: value(samples, "ikstream_runs_finished_total", status=status)
        for status in ("completed", "failed", "cancelled")
    }
    assert finished == {"completed": 2, "failed": 1, "cancelled": 1}
    for status, count in finished.items():
        assert value(samples, "ikstream_run_duration_seconds_count", status=status) == count
    assert value(samples, "ikstream_time_to_first_event_seconds_count") == 4
    assert value(samples, "ikstream_streams_opened_total") == len(streams)
    assert value(samples, "ikstream_events_sent_total") == sum(len(s.events) for s in streams)
    assert value(samples, "ikstream_sent_bytes_total") == sum(len(s.body) for s in streams)
    assert value(samples, "ikstream_resumes_total") == 1
    rejections = {
        (dict(labels)["status_code"], dict(labels)["reason"]): count
        for (name, labels), count in samples.items()
        if name == "ikstream_rejections_total"
    }
    assert rejections == {("429", "rate_limited"): 1, ("401", "unauthorized"): 1}
    assert value(samples, "ikstream_store_errors_total") == 0
