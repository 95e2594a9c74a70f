"""Scope item 7: plain ``to_response()`` routes drain on SIGTERM, a router outlives a
``TestClient`` lifespan, and a grace not longer than ``retry`` is refused."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port
from fastapi import FastAPI
from httpx_sse import aconnect_sse
from test_shutdown import wait_ready

from fastapi_ikstream import create_router
from fastapi_ikstream.testing import FakeDeployment

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
DRAIN = 1.5


async def read_all(http: httpx.AsyncClient, url: str, into: list[dict[str, Any]]) -> None:
    async with aconnect_sse(http, "GET", url) as source:
        assert source.response.status_code == 200
        async for sse in source.aiter_sse():
            into.append(json.loads(sse.data))


async def test_sigterm_lets_a_plain_route_run_finish_within_the_drain_and_cancels_the_rest():
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "tests.apps.plain_route_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        cwd=ROOT,
        env={"IKSTREAM_DRAIN_TIMEOUT": str(DRAIN), "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    short: list[dict[str, Any]] = []
    long: list[dict[str, Any]] = []
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            await wait_ready(http, url, process)
            tasks = [
                asyncio.create_task(read_all(http, url + "/run?steps_=8", short)),  # 0.8 s
                asyncio.create_task(read_all(http, url + "/run?steps_=200", long)),  # 20 s
            ]
            async with asyncio.timeout(5):
                while len(short) < 2 or len(long) < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            async with asyncio.timeout(DRAIN + 3):
                await asyncio.gather(*tasks)
                returncode = await process.wait()
            exited = time.monotonic() - signalled
        assert process.stderr is not None
        errors = (await process.stderr.read()).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert returncode in (0, -signal.SIGTERM), errors
    assert "Traceback" not in errors, errors
    assert exited <= DRAIN + 2, exited
    assert [e["type"] for e in short[-2:]] == ["result", "done"]
    assert [e["type"] for e in long[-2:]] == ["cancelled", "done"]
    assert long[-2]["error"]["message"] == "the server is shutting down"
    assert len(long) < 200


def test_a_router_works_again_after_a_testclient_lifespan_ended():
    with warnings.catch_warnings():  # this Starlette asks for httpx2 in its TestClient
        warnings.simplefilter("ignore", UserWarning)
        from fastapi.testclient import TestClient
    app = FastAPI()
    app.include_router(
        create_router(FakeDeployment([{"results": [{"DATA_DICT": {}}]}]), path="/gen")
    )
    for _ in range(2):
        with TestClient(app) as client:
            response = client.post("/gen", json={})
            assert response.status_code == 200, response.text
            created = client.post("/gen/runs", json={})
            assert created.status_code == 201, created.text
            assert "event: done" in client.post("/gen/stream", json={}).text


@pytest.mark.parametrize(("grace", "retry"), [(2, 3000), (3, 3000), (0.5, 1000)])
def test_a_reconnect_grace_not_longer_than_retry_is_refused(grace: float, retry: int) -> None:
    with pytest.raises(ValueError, match="reconnect_grace"):
        create_router(FakeDeployment([]), reconnect_grace=grace, retry=retry)
    create_router(FakeDeployment([]), reconnect_grace=grace, retry=retry, on_disconnect="continue")
