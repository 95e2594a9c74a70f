"""Stopping uvicorn with open streams: streams close at once, runs drain, the process exits.

The app runs in its own ``python -m uvicorn`` process (``tests/apps/shutdown_app.py``) so
that SIGTERM reaches uvicorn's real signal handling, as under a process manager.
"""

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port
from fastapi import FastAPI
from httpx_sse import aconnect_sse

from fastapi_ikstream import create_router
from fastapi_ikstream.testing import FakeDeployment

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
DRAIN = 1.5
SLOW_STEPS = 100  # 10 s at 0.1 s a step: still going at the end of the drain
SHORT_STEPS = 8  # 0.8 s: ends within the drain


async def start_server(log_path: Path) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    env = {
        **os.environ,
        "IKSTREAM_EVENT_LOG": str(log_path),
        "IKSTREAM_DRAIN_TIMEOUT": str(DRAIN),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "tests.apps.shutdown_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return process, f"http://127.0.0.1:{port}"


async def wait_ready(http: httpx.AsyncClient, url: str, process: Any) -> None:
    async with asyncio.timeout(15):
        while process.returncode is None:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(url + "/openapi.json")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise AssertionError("uvicorn exited: " + (await process.stderr.read()).decode())


class Follower:
    """Reads one run's stream to its end, noting when it ended."""

    def __init__(self, steps: int, path: str = "/slow") -> None:
        self.steps = steps
        self.path = path
        self.events: list[dict[str, Any]] = []
        self.ended_at: float | None = None

    async def run(self, http: httpx.AsyncClient, url: str) -> None:
        body = {"parameters": {"steps": self.steps}}
        async with aconnect_sse(http, "POST", f"{url}{self.path}/stream", json=body) as source:
            assert source.response.status_code == 200
            async for sse in source.aiter_sse():
                self.events.append(json.loads(sse.data))
        self.ended_at = time.monotonic()


async def test_sigterm_closes_open_streams_and_cancels_runs_left_after_the_drain(tmp_path):
    log_path = tmp_path / "events.jsonl"
    process, url = await start_server(log_path)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            await wait_ready(http, url, process)
            followers = [
                Follower(SLOW_STEPS),
                Follower(SLOW_STEPS),
                Follower(SLOW_STEPS, "/other"),  # another router of the same app
                Follower(SHORT_STEPS),
            ]
            tasks = [asyncio.create_task(f.run(http, url)) for f in followers]
            async with asyncio.timeout(5):
                while not all(len(f.events) >= 2 for f in followers):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)

            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            async with asyncio.timeout(DRAIN + 2):
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
    assert DRAIN - 0.2 <= exited <= DRAIN + 2, exited
    for follower in followers:
        # the server closed each stream cleanly, at once, before its run ended
        assert follower.ended_at is not None
        assert follower.ended_at - signalled < 0.5
        assert follower.events[-1]["type"] not in ("done", "result", "cancelled")
        assert [e["seq"] for e in follower.events] == list(range(1, len(follower.events) + 1))

    logged: dict[str, list[dict[str, Any]]] = {}
    for line in log_path.read_text().splitlines():
        event = json.loads(line)
        logged.setdefault(event["run_id"], []).append(event)
    assert len(logged) == 4
    for follower in followers:
        events = logged[follower.events[0]["run_id"]]
        assert events[: len(follower.events)] == follower.events
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        if follower.steps == SLOW_STEPS:
            assert [e["type"] for e in events[-2:]] == ["cancelled", "done"]
            assert events[-2]["error"]["message"] == "the server is shutting down"
        else:  # it ended within the drain time
            assert [e["type"] for e in events[-2:]] == ["result", "done"]


async def test_a_server_shutting_down_closes_streams_with_a_retry_hint_and_refuses_new_ones(
    serve_app,
):
    deployment = FakeDeployment([{"state": "STARTED"}] * 100, delay=0.05)
    app = FastAPI()
    router = create_router(deployment, path="/gen", retry=100, drain_timeout=0.3)
    app.include_router(router)
    with serve_app(app) as server:
        async with httpx.AsyncClient(timeout=5) as http:
            created = await http.post(server.url + "/gen/runs", json={})
            events_url = server.url + created.json()["events_url"]
            body = b""
            async with http.stream("GET", events_url) as response:
                async for chunk in response.aiter_bytes():
                    if not body:
                        router.manager.begin_shutdown()
                    body += chunk
            answers = [
                await http.post(server.url + "/gen/runs", json={}),
                await http.post(server.url + "/gen/stream", json={}),
                await http.get(events_url),
            ]
            assert [answer.status_code for answer in answers] == [503] * 3
            assert all("shutting down" in str(answer.json()["detail"]) for answer in answers)
            assert all(answer.headers["Retry-After"] for answer in answers)
            snapshot = await http.get(server.url + created.json()["state_url"])
            assert snapshot.status_code == 200
    # the stream ended between events, with the reconnection delay as a lone field line
    assert body.startswith(b"event: run\n")
    assert body.endswith(b"\n\nretry: 100\n")
    assert b"event: done" not in body
    assert deployment.calls[0].cancelled
