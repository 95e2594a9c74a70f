"""Unnamed events (router and StreamingRun), the status code and upstream id on states,
``raise_on_error`` on the byte streams, the OpenAPI schema, and the typings route."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from httpx_sse import aconnect_sse

from fastapi_ikstream import (
    DeploymentError,
    EventType,
    RunFailedError,
    RunState,
    RunStatus,
    StreamingRun,
    create_router,
)
from fastapi_ikstream.testing import FakeDeployment

pytestmark = pytest.mark.timeout(30)

UPDATES: list[dict[str, Any]] = [
    {"state": "PENDING", "eta": [100, 900], "uuid": "u-1"},
    {"state": "STARTED", "progress": {"current": 1, "total": 2}},
    {"log": "halfway"},
    {"results": [{"DATA_DICT": {"ok": True}}]},
]


def ikclient_like(fail: bool = False) -> Any:
    async def run(on_progress: Any) -> Any:
        on_progress(run_id="x", name="wf", uuid=None, state="SENDING", eta=(None, None))
        on_progress(run_id="x", name="wf", uuid="scale-42", state="PENDING", eta=(10, 20))
        on_progress(run_id="x", name="wf", uuid="scale-42", state="STARTED", eta=(5, 10))
        on_progress(log="a line")
        await asyncio.sleep(0)
        if fail:
            raise DeploymentError("no face", code="no_faces")
        return [{"DATA_DICT": {"faces": 1}}]

    return run


async def states_of(run: StreamingRun) -> list[RunState]:
    async with asyncio.timeout(10):
        return [state async for state in run.aiter_states()]


async def test_every_state_with_a_status_carries_its_code_and_the_upstream_id():
    states = await states_of(StreamingRun(ikclient_like()))
    assert [s.type.value for s in states] == [
        "run",
        "progress",
        "progress",
        "progress",
        "log",
        "result",
        "done",
    ]
    for state in states:
        if state.status is None:
            assert state.code is None
        else:
            assert state.code == state.status.code
    assert [s.upstream_id for s in states] == [
        None,
        None,
        "scale-42",
        "scale-42",
        None,  # a log event carries no status, nor the id
        "scale-42",
        "scale-42",
    ]
    assert json.loads(states[2].to_json())["upstream_id"] == "scale-42"
    assert RunState.model_validate_json(states[2].to_json()) == states[2]


def test_code_follows_the_status_unless_given():
    state = RunState(type=EventType.FAILED, run_id="r", seq=3, status=RunStatus.FAILED)
    assert state.code == 11
    assert RunState(type=EventType.LOG, run_id="r", seq=4).code is None
    assert (
        json.loads(RunState(type=EventType.RUN, run_id="r", seq=1, status="received").to_json())[
            "code"
        ]
        == 1
    )


async def drain(source: Any, into: list[bytes]) -> None:
    async with asyncio.timeout(10):
        async for chunk in source:
            into.append(chunk)


async def test_aiter_sse_raises_after_the_failed_and_done_blocks():
    chunks: list[bytes] = []
    with pytest.raises(RunFailedError) as caught:
        await drain(StreamingRun(ikclient_like(fail=True)).aiter_sse(), chunks)
    text = b"".join(chunks).decode()
    assert text.index("event: failed\n") < text.index("event: done\n")
    assert text.endswith("\n\n")
    assert caught.value.state.error is not None
    assert caught.value.state.error.code == "no_faces"


async def test_aiter_jsonl_raises_after_the_last_line_and_not_without_raise_on_error():
    lines: list[bytes] = []
    with pytest.raises(RunFailedError):
        await drain(StreamingRun(ikclient_like(fail=True)).aiter_jsonl(), lines)
    assert json.loads(lines[-1])["type"] == "done"
    run = StreamingRun(ikclient_like(fail=True), raise_on_error=False)
    async with asyncio.timeout(10):
        quiet = [chunk async for chunk in run.aiter_sse()]
    assert b"event: failed\n" in b"".join(quiet)


async def test_a_successful_run_does_not_raise_from_aiter_sse():
    async with asyncio.timeout(10):
        chunks = [chunk async for chunk in StreamingRun(ikclient_like()).aiter_sse()]
    assert b"event: result\n" in b"".join(chunks)


async def test_streaming_run_unnamed_events_in_bytes_and_in_a_response(serve_app):
    async with asyncio.timeout(10):
        chunks = [c async for c in StreamingRun(ikclient_like(), named_events=False).aiter_sse()]
    raw = b"".join(chunks)
    assert b"event:" not in raw
    assert raw.startswith(b'data: {"type":"run"')
    assert b"retry: 3000\n" in raw

    app = FastAPI()

    @app.get("/run")
    async def run_endpoint() -> Any:
        return StreamingRun(ikclient_like(fail=True), named_events=False).to_response()

    with serve_app(app) as server:
        async with (
            httpx.AsyncClient(timeout=10) as http,
            aconnect_sse(http, "GET", server.url + "/run") as source,
        ):
            events = [event async for event in source.aiter_sse()]
    assert {event.event for event in events} == {"message"}
    kinds = [json.loads(event.data)["type"] for event in events]
    assert kinds[-2:] == ["failed", "done"]  # to_response: the failure travels in-band
    assert json.loads(events[-2].data)["code"] == 11


async def test_router_with_unnamed_events_serves_them_everywhere(serve_app):
    app = FastAPI()
    deployment = FakeDeployment(UPDATES, delay=0.01)
    app.include_router(create_router(deployment, path="/gen", named_events=False), prefix="/api")
    with serve_app(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            async with http.stream("POST", "/api/gen/stream", json={}) as response:
                raw = b"".join([chunk async for chunk in response.aiter_raw()])
            created = (await http.post("/api/gen/runs", json={})).json()
            async with aconnect_sse(http, "GET", created["events_url"]) as source:
                replay = [event async for event in source.aiter_sse()]
            async with http.stream(
                "POST", "/api/gen/stream", json={}, headers={"Accept": "application/jsonl"}
            ) as response:
                lines = [line async for line in response.aiter_lines()]
    assert b"event:" not in raw
    blocks = raw.decode().split("\n\n")[:-1]
    assert all(block.startswith("data: ") for block in blocks)
    assert [json.loads(b.split("\n")[0][6:])["type"] for b in blocks] == [
        "run",
        "progress",
        "progress",
        "log",
        "result",
        "done",
    ]
    progress = json.loads(blocks[1].split("\n")[0][6:])
    assert (progress["code"], progress["upstream_id"]) == (2, "u-1")
    assert {event.event for event in replay} == {"message"}
    assert json.loads(replay[-1].data)["type"] == "done"
    assert json.loads(lines[0])["type"] == "run"  # JSON lines are the same either way


def test_openapi_documents_named_and_unnamed_events_and_the_new_fields():
    named, unnamed = FastAPI(), FastAPI()
    named.include_router(create_router(FakeDeployment([]), path="/a"))
    unnamed.include_router(create_router(FakeDeployment([]), path="/b", named_events=False))
    schema_a, schema_b = named.openapi(), unnamed.openapi()
    item_a = schema_a["paths"]["/a/stream"]["post"]["responses"]["200"]["content"][
        "text/event-stream"
    ]["itemSchema"]
    item_b = schema_b["paths"]["/b/stream"]["get"]["responses"]["200"]["content"][
        "text/event-stream"
    ]["itemSchema"]
    assert item_a["required"] == ["data", "event", "id"]
    assert "event" in item_a["properties"]
    assert item_b["required"] == ["data", "id"]
    assert "event" not in item_b["properties"]
    description = schema_b["paths"]["/b/stream"]["get"]["responses"]["200"]["description"]
    assert "unnamed events" in description
    fields = schema_a["components"]["schemas"]["RunState"]["properties"]
    assert {"code", "upstream_id"} <= set(fields)


async def test_the_router_serves_the_typings_beside_the_module():
    app = FastAPI()
    app.include_router(create_router(FakeDeployment([]), path="/gen"), prefix="/api")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        typings = await http.get("/api/gen/ikstream.d.ts")
        module = await http.get("/api/gen/ikstream.js")
    assert typings.status_code == 200
    assert typings.headers["content-type"].startswith("application/typescript")
    assert "export function streamStates(" in typings.text
    assert "export function streamStates(" in module.text
    off = FastAPI()
    off.include_router(create_router(FakeDeployment([]), path="/gen", browser_module=False))
    transport = httpx.ASGITransport(app=off)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/gen/ikstream.d.ts")).status_code == 404
