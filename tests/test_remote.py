"""Servers in a chain: client → A → B, A's router running `RemoteDeployment` against B's.

Every server is a real uvicorn server on 127.0.0.1. B (``tests/apps/chain_upstream.py``) runs
a slow generator. A uses ``reconnect_grace=0``, so a client that leaves A cancels A's run at
once, and the test can see that cancel reach B well within B's own grace time (3 s).
"""

import asyncio
import contextlib
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from apps.chain_upstream import make_app
from conftest import free_port
from fastapi import FastAPI, HTTPException, Request
from proxy import CuttingProxy

from fastapi_ikstream import EventType, RunState, create_router
from fastapi_ikstream.client import aconnect_states
from fastapi_ikstream.remote import EventMapping, RemoteDeployment, ikstream_event
from fastapi_ikstream.testing import FakeDeployment

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = httpx.Timeout(5.0, read=20.0)
BODY = {"inputs": [{"text": "a"}, {"text": "b"}], "parameters": {"delay": 0.005}}
KINDS = ["run", "progress"] + ["progress"] * 5 + ["log"] + ["progress"] * 3
KINDS += ["partial", "result", "done"]


def edge_app(upstream: str, **options: Any) -> FastAPI:
    """A: a router whose deployment is B's stream endpoint."""
    remote = RemoteDeployment(upstream, reconnect_delay=0.02, timeout=5.0, **options)
    app = FastAPI()
    app.include_router(
        create_router(remote, path="/edge", reconnect_grace=0, retry=20), prefix="/api"
    )
    return app


async def read_states(http: httpx.AsyncClient, url: str, body: Any = BODY) -> list[RunState]:
    async with aconnect_states(http, "POST", url, json=body, raise_on_error=False) as stream:
        return [state async for state in stream.aiter_states()]


def comparable(states: list[RunState]) -> list[dict[str, Any]]:
    """Everything but the run id: A's run has its own, B's events are otherwise A's."""
    return [
        state.model_dump(mode="json", exclude={"run_id"}, exclude_none=True) for state in states
    ]


class Recorder:
    """ASGI middleware noting each request's method and path."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.seen.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)


async def test_chain_streams_every_event_in_order(serve_app):
    b_app, calls = make_app()
    with serve_app(b_app) as b, serve_app(edge_app(b.url + "/api/job/stream")) as a:
        async with asyncio.timeout(30), httpx.AsyncClient(timeout=TIMEOUT) as http:
            reference = await read_states(http, b.url + "/api/job/stream")
            runs = await asyncio.gather(
                *(read_states(http, a.url + "/api/edge/stream") for _ in range(3))
            )
    assert [state.type.value for state in reference] == KINDS
    for states in runs:
        assert comparable(states) == comparable(reference)
        assert len({state.run_id for state in states}) == 1
        assert states[0].run_id not in {state.run_id for state in reference}
    assert states[-2].results == [{"DATA_DICT": {"steps": 8, "inputs": 2}}]
    assert len(calls) == 4
    assert all(call.finished for call in calls)


async def test_chain_over_json_lines(serve_app):
    b_app, _ = make_app()
    jsonl = EventMapping(ikstream_event, accept="application/jsonl")
    with (
        serve_app(b_app) as b,
        serve_app(edge_app(b.url + "/api/job/stream", map_event=jsonl)) as a,
    ):
        async with asyncio.timeout(30), httpx.AsyncClient(timeout=TIMEOUT) as http:
            reference = await read_states(http, b.url + "/api/job/stream")
            states = await read_states(http, a.url + "/api/edge/stream")
    assert comparable(states) == comparable(reference)


CUT_RANGE = 1000
"""Cut points are drawn from [1, CUT_RANGE) body bytes, below the 2,373 bytes of events B
sends before its ``result``: every run's first connection is cut."""


async def test_cuts_between_a_and_b_lose_and_repeat_nothing(serve_app):
    b_app, calls = make_app()
    rng = random.Random(17)
    with serve_app(b_app) as b:
        async with CuttingProxy(
            b.config.port, cut_at=lambda: rng.randrange(1, CUT_RANGE)
        ).running() as proxy:
            upstream = proxy.url + "/api/job/stream"
            with serve_app(edge_app(upstream, max_reconnects=10)) as a:
                async with asyncio.timeout(90), httpx.AsyncClient(timeout=TIMEOUT) as http:
                    reference = await read_states(http, b.url + "/api/job/stream")
                    for _ in range(30):
                        states = await read_states(http, a.url + "/api/edge/stream")
                        assert comparable(states) == comparable(reference)
    assert proxy.cuts >= 30
    resumes = [value for value in proxy.last_event_ids if value is not None]
    assert len(resumes) == proxy.streams - 30  # every stream but each run's first resumed
    assert all(value.startswith("r_") for value in resumes)
    assert len(calls) == 31  # a resume never started a second run on B
    assert all(call.finished for call in calls)


async def follow_then_leave(http: httpx.AsyncClient, url: str, how: str, body: Any) -> float:
    """Read A's stream to the second progress event, then drop it, or ``DELETE`` the run and
    read on to its end (``cancelled``, ``done``); returns when it left (``time.monotonic``)."""
    left_at = None
    async with aconnect_states(
        http, "POST", url + "/stream", json=body, raise_on_error=False
    ) as stream:
        async for state in stream.aiter_states():
            if state.type is EventType.PROGRESS and state.progress and state.progress.current >= 2:
                if how == "drop":
                    return time.monotonic()
                if left_at is None:
                    left_at = time.monotonic()
                    answer = await http.delete(f"{url}/runs/{state.run_id}")
                    assert answer.status_code == 202
    assert state.type is EventType.DONE
    assert stream.terminal_state is not None
    assert stream.terminal_state.type is EventType.CANCELLED
    assert left_at is not None
    return left_at


@pytest.mark.parametrize("how", ["drop", "delete"])
async def test_leaving_a_cancels_the_run_on_b_within_a_second(serve_app, how):
    b_app, calls = make_app()
    recorder = Recorder(b_app)
    body = {"parameters": {"delay": 0.05, "steps": 200}}  # 10 s if nothing cancels it
    with serve_app(recorder) as b, serve_app(edge_app(b.url + "/api/job/stream")) as a:
        async with asyncio.timeout(30), httpx.AsyncClient(timeout=TIMEOUT) as http:
            left_at = await follow_then_leave(http, a.url + "/api/edge", how, body)
            assert await asyncio.to_thread(calls[0].ended.wait, 5)
            deletes = [path for method, path in recorder.seen if method == "DELETE"]
            assert len(deletes) == 1
            b_state = (await http.get(b.url + deletes[0])).json()
    call = calls[0]
    assert call.cancelled_at is not None
    assert not call.finished
    assert call.cancelled_at - left_at < 1.0
    assert b_state["finished"] is True
    assert b_state["latest"]["type"] == "cancelled"  # by A's DELETE, not B's disconnect policy
    assert b_state["latest"]["error"]["message"] == "cancelled by the client"


async def test_a_failure_on_b_ends_the_run_on_a_with_its_code(serve_app):
    failing = FakeDeployment([{"state": "STARTED"}, {"state": "STARTED"}], fail_at=1)
    b_app = FastAPI()
    b_app.include_router(create_router(failing, path="/job"), prefix="/api")
    with serve_app(b_app) as b, serve_app(edge_app(b.url + "/api/job/stream")) as a:
        async with asyncio.timeout(30), httpx.AsyncClient(timeout=TIMEOUT) as http:
            states = await read_states(http, a.url + "/api/edge/stream", {})
    assert [state.type.value for state in states] == ["run", "progress", "failed", "done"]
    error = states[2].error
    assert error is not None
    assert (error.code, error.message) == ("fake_failure", "fake failure")


async def start_b_process(port: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "tests.apps.chain_upstream:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        cwd=ROOT,
        env=dict(os.environ),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(15), httpx.AsyncClient() as http:
        while process.returncode is None:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"http://127.0.0.1:{port}/openapi.json")).status_code == 200:
                    return process
            await asyncio.sleep(0.05)
    raise AssertionError("B did not start")


async def test_b_killed_ends_the_run_on_a_failed_upstream_incomplete(serve_app):
    port = free_port()
    process = await start_b_process(port)
    edge = edge_app(f"http://127.0.0.1:{port}/api/job/stream", max_reconnects=3)
    body = {"parameters": {"delay": 0.05, "steps": 200}}
    try:
        with serve_app(edge) as a:
            async with asyncio.timeout(30), httpx.AsyncClient(timeout=TIMEOUT) as http:
                url = a.url + "/api/edge/stream"
                async with aconnect_states(
                    http, "POST", url, json=body, raise_on_error=False
                ) as stream:
                    states = []
                    async for state in stream.aiter_states():
                        states.append(state)
                        if len(states) == 3:
                            process.kill()
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
    assert [state.type.value for state in states[-2:]] == ["failed", "done"]
    assert all(state.type is EventType.PROGRESS for state in states[1:-2])
    error = states[-2].error
    assert error is not None
    assert (error.code, error.retryable) == ("upstream_incomplete", True)


async def test_the_upstream_headers_go_with_every_request_the_cancel_too(serve_app):
    async def key_holder(request: Request) -> str:
        key = request.headers.get("x-key")
        if key is None:
            raise HTTPException(401, detail="no key")
        return "holder-of-" + key

    b_app, calls = make_app(auth=key_holder)
    body = {"parameters": {"delay": 0.05, "steps": 200}}
    with serve_app(b_app) as b:
        upstream = b.url + "/api/job/stream"
        with serve_app(edge_app(upstream, headers={"X-Key": "k1"})) as a:
            async with asyncio.timeout(30), httpx.AsyncClient(timeout=TIMEOUT) as http:
                left_at = await follow_then_leave(http, a.url + "/api/edge", "drop", body)
                assert await asyncio.to_thread(calls[0].ended.wait, 5)
        with serve_app(edge_app(upstream)) as keyless:
            async with asyncio.timeout(30), httpx.AsyncClient(timeout=TIMEOUT) as http:
                refused = await read_states(http, keyless.url + "/api/edge/stream", body)
    assert calls[0].cancelled_at is not None
    assert calls[0].cancelled_at - left_at < 1.0  # the DELETE was B's principal's: accepted
    assert [state.type.value for state in refused] == ["run", "failed", "done"]
    assert refused[1].error is not None
    assert (refused[1].error.code, refused[1].error.retryable) == ("upstream_error", False)
    assert refused[1].error.message == "The upstream answered HTTP 401."
    assert len(calls) == 1
