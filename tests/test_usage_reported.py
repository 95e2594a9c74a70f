"""The deployment's own usage and name in usage records, through a real router (uvicorn)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Literal

import httpx
import pytest
from conftest import serve
from fastapi import FastAPI
from pydantic import BaseModel
from redis_server import run_redis_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from stream_support import read_stream

from fastapi_ikstream import DeploymentError, RunStore, create_router
from fastapi_ikstream.redis import RedisRunStore
from fastapi_ikstream.remote import RemoteDeployment, UpstreamEvent
from fastapi_ikstream.testing import FakeDeployment, RecordingUsage
from fastapi_ikstream.usage import UsageRecord

REPORTED = {"output_tokens": 512, "gpu_seconds": 3.9, "model": "m-1"}
"""What `Metered` reports over a run, merged: later values replace earlier ones per key."""


class Order(BaseModel):
    """How a `Metered` run ends."""

    end: Literal["completed", "failed"] = "completed"


class Metered:
    """A named deployment that reports its usage in updates, some of them usage only."""

    name = "metered-gpu"

    def open_run(self, inputs: Any, parameters: Mapping[str, Any]) -> Any:
        return self._run(inputs)

    async def _run(self, order: Order) -> AsyncIterator[dict[str, Any]]:
        yield {"usage": {"output_tokens": 10, "model": "m-0"}}  # usage only: no event
        yield {"state": "STARTED", "progress": {"current": 1, "total": 2}, "usage": {"x": 1}}
        # a bad entry is left out with a warning, the good ones of the update are kept
        yield {"usage": {"output_tokens": 512, "gpu_seconds": 3.9, "model": "m-1", "x": [1]}}
        yield {"usage": {"x": True}}
        yield {"usage": "not a mapping"}
        if order.end == "failed":
            raise DeploymentError("it broke", code="broke")
        yield {"results": [{"DATA_DICT": {"ok": True}}]}


class Unnamed:
    """A deployment without a ``name``: its records name its class."""

    def open_run(self, inputs: Any, parameters: Mapping[str, Any]) -> Any:
        return FakeDeployment([{"state": "STARTED"}]).open_run(inputs, parameters)


async def generate(inputs: Any, parameters: Mapping[str, Any], on_progress: Any) -> Any:
    """A function deployment that reports its usage through ``on_progress``."""
    on_progress(state="STARTED", usage={"output_tokens": 3})
    on_progress(usage={"output_tokens": 7})
    return [{"DATA_DICT": {"ok": True}}]


def app_for(deployment: Any, usage: RecordingUsage, store: RunStore | None = None) -> FastAPI:
    options: dict[str, Any] = {"request_model": Order} if isinstance(deployment, Metered) else {}
    router = create_router(
        deployment, path="/gen", on_usage=usage, keep_alive=0, store=store, **options
    )
    app = FastAPI()
    app.include_router(router, prefix="/api")
    return app


async def one_run(url: str, usage: RecordingUsage, body: Any) -> tuple[UsageRecord, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        stream = await read_stream(client, "POST", "/api/gen/stream", json=body)
        assert await usage.wait_for(1)
    assert stream.run_id is not None
    [record] = usage.for_run(stream.run_id)
    return record, stream


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with run_redis_server() as server:
        yield server.url


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> RunStore | None:
    if request.param == "memory":
        return None
    url = request.getfixturevalue("redis_url")
    return RedisRunStore(url, prefix=f"r{uuid.uuid4().hex[:8]}:")


@pytest.mark.parametrize("end", ["completed", "failed"])
async def test_the_record_has_the_usage_the_deployment_reported(
    store: RunStore | None, end: str, caplog: pytest.LogCaptureFixture
) -> None:
    usage = RecordingUsage()
    caplog.set_level(logging.WARNING, logger="fastapi_ikstream")
    with serve(app_for(Metered(), usage, store)) as server:
        record, stream = await one_run(server.url, usage, {"end": end})
    assert record.status.value == end
    assert record.deployment == "metered-gpu"
    assert record.usage == {**REPORTED, "x": 1}
    # usage is billing data: it stays on the server, and a usage-only update sends nothing
    assert stream.kinds == ["run", "progress", "result" if end == "completed" else "failed", "done"]
    assert b"usage" not in stream.body
    assert b"output_tokens" not in stream.body
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(ignored) == 3, ignored


async def test_a_function_reports_through_on_progress_and_is_named_after_itself() -> None:
    usage = RecordingUsage()
    with serve(app_for(generate, usage)) as server:
        record, stream = await one_run(server.url, usage, {"inputs": []})
    assert stream.kinds == ["run", "progress", "result", "done"]
    assert (record.deployment, record.usage) == ("generate", {"output_tokens": 7})


async def test_a_deployment_without_a_name_is_named_by_its_class() -> None:
    usage = RecordingUsage()
    with serve(app_for(Unnamed(), usage)) as server:
        record, _ = await one_run(server.url, usage, {"inputs": []})
    assert (record.deployment, record.usage) == ("Unnamed", {})


async def test_an_overridden_deployment_names_the_one_that_ran() -> None:
    usage = RecordingUsage()
    router = create_router(Unnamed(), path="/gen", on_usage=usage, keep_alive=0)
    fake = FakeDeployment([{"state": "STARTED", "usage": {"gpu_seconds": 0.25}}])
    app = FastAPI()
    app.include_router(router, prefix="/api")
    app.dependency_overrides[router.deployment_provider] = lambda: fake
    with serve(app) as server:
        record, _ = await one_run(server.url, usage, {"inputs": []})
    assert (record.deployment, record.usage) == ("FakeDeployment", {"gpu_seconds": 0.25})


def tokens_app() -> Starlette:
    """An upstream stream that reports its token counts, then its output."""

    async def stream(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for item in ({"tokens": 4}, {"tokens": 9}, {"output": "hi"}):
                yield f"data: {json.dumps(item)}\n\n".encode()

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[Route("/stream", stream, methods=["POST"])])


def tokens_event(event: UpstreamEvent) -> dict[str, Any] | None:
    payload = event.json()
    if "tokens" in payload:
        return {"state": "STARTED", "usage": {"output_tokens": payload["tokens"]}}
    return {"status": "completed", "results": [{"DATA_DICT": payload}]}


async def test_a_remote_mapping_carries_the_upstreams_usage() -> None:
    usage = RecordingUsage()
    with serve(tokens_app()) as upstream:
        remote = RemoteDeployment(upstream.url + "/stream", map_event=tokens_event, name="llm")
        with serve(app_for(remote, usage)) as server:
            record, stream = await one_run(server.url, usage, {"inputs": []})
    assert stream.kinds == ["run", "progress", "progress", "result", "done"]
    assert (record.deployment, record.usage) == ("llm", {"output_tokens": 9})


async def test_a_chained_ikstream_upstream_keeps_its_usage_to_itself() -> None:
    upstream_usage, usage = RecordingUsage(), RecordingUsage()
    with serve(app_for(Metered(), upstream_usage)) as upstream:
        remote = RemoteDeployment(upstream.url + "/api/gen/stream")
        with serve(app_for(remote, usage)) as server:
            record, stream = await one_run(server.url, usage, {"inputs": []})
        assert await upstream_usage.wait_for(1)
    assert stream.kinds == ["run", "progress", "result", "done"]
    assert (record.deployment, record.usage) == ("remote", {})
    [billed] = upstream_usage.records  # the upstream bills its run itself
    assert (billed.deployment, billed.usage) == ("metered-gpu", {**REPORTED, "x": 1})


class Counting:
    """Reports its usage many times in a row, then waits for the test before it ends."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    def open_run(self, inputs: Any, parameters: Mapping[str, Any]) -> Any:
        return self._run()

    async def _run(self) -> AsyncIterator[dict[str, Any]]:
        yield {"state": "STARTED"}
        for tokens in range(1, 201):
            yield {"usage": {"output_tokens": tokens}}
        await self.gate.wait()
        yield {"results": []}


@pytest.mark.redis
async def test_a_shared_store_keeps_the_latest_usage_while_the_run_goes_on(
    redis_url: str,
) -> None:
    usage, counting = RecordingUsage(), Counting()
    store = RedisRunStore(redis_url, prefix=f"r{uuid.uuid4().hex[:8]}:")
    router = create_router(counting, path="/gen", on_usage=usage, keep_alive=0, store=store)
    app = FastAPI()
    app.include_router(router, prefix="/api")
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        asyncio.timeout(20),
    ):
        created = await client.post("/api/gen/runs", json={"inputs": []})
        run_id = created.json()["run_id"]
        kept: dict[str, Any] | None = None
        for _ in range(500):  # the writes catch up with the last value, one at a time
            info = await store.get_info(run_id)
            kept = info.usage if info is not None else None
            if kept == {"output_tokens": 200}:
                break
            await asyncio.sleep(0.02)
        assert kept == {"output_tokens": 200}
        assert info is not None
        assert (info.router, info.deployment) == ("gen", "Counting")
        counting.gate.set()
        assert await usage.wait_for(1)
    [record] = usage.records
    assert record.usage == {"output_tokens": 200}
