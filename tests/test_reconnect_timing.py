"""Runs of 20 s survive clients that reconnect in real clients' timing, with the defaults.

A real uvicorn server runs a router built with its default ``retry`` (3000 ms) and
``reconnect_grace`` (30 s) over a slow deployment (40 updates, 0.5 s apart). Each client
reads one run with ``httpx-sse`` and drops its connection at seeded random points (after a
random event, then a random part of the pause before the next one). After a drop it does
what ``EventSource`` does: it waits the ``retry:`` it was sent, plus 0-500 ms of jitter
(or, in the second case, 10 s), then reconnects with ``Last-Event-ID``, in one of three
ways:

- ``eventsource``: ``GET /stream?…`` again (what a browser ``EventSource`` does);
- ``events``: ``GET /runs/{id}/events`` (a client that knows the run id);
- ``repost``: ``POST /stream`` again with the same body (``fetch-event-source``).

The runs are attached (started by a stream request), so any of them would be cancelled if
the grace did not outlast the clients' delay. Every run must end with seqs 1..N, each once,
``result`` before ``done``, and the deployment called once per run, never cancelled.
"""

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from httpx_sse import aconnect_sse

from fastapi_ikstream import create_router
from fastapi_ikstream.testing import FakeDeployment

pytestmark = pytest.mark.timeout(60)

UPDATES = 40
DELAY = 0.5  # seconds between updates: a run takes 20 s
TOTAL = UPDATES + 3  # run, progress…, result, done
RUNS = 33  # three ways to reconnect, eleven runs each
MODES = ("eventsource", "events", "repost")
BODY = {"inputs": [], "parameters": {"prompt": "a cat"}}
DEFAULT_RETRY_MS = 3000
JITTER = 0.5


def slow_deployment() -> FakeDeployment:
    updates: list[dict[str, Any]] = [
        {"state": "STARTED", "progress": {"current": i + 1, "total": UPDATES}}
        for i in range(UPDATES)
    ]
    updates.append({"results": [{"DATA_DICT": {"ok": True}}]})
    return FakeDeployment(updates, delay=DELAY)


def make_app(deployment: FakeDeployment) -> FastAPI:
    app = FastAPI()
    app.include_router(create_router(deployment, path="/gen"), prefix="/api")  # the defaults
    return app


@dataclass
class Reader:
    """One client: how it reconnects, where it drops, and what it saw.

    Attributes:
        mode: one of `MODES`.
        drops: event counts after which it drops the connection, ascending.
        rng: its own seeded random source (jitter, where in a pause it drops).
        fixed_wait: seconds to wait after a drop instead of the ``retry:`` delay.
    """

    mode: str
    drops: list[int]
    rng: random.Random
    fixed_wait: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    retries: list[int] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)

    def request(self, base: str, last_id: str | None) -> tuple[str, str, dict[str, Any]]:
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        if self.mode == "repost":
            return "POST", f"{base}/api/gen/stream", {"headers": headers, "json": BODY}
        if self.mode == "events" and last_id is not None:
            run_id = last_id.rsplit(":", 1)[0]
            return "GET", f"{base}/api/gen/runs/{run_id}/events", {"headers": headers}
        params = {"prompt": "a cat"}
        return "GET", f"{base}/api/gen/stream", {"headers": headers, "params": params}

    async def read(self, http: httpx.AsyncClient, base: str) -> None:
        """Read the run to ``done``, dropping and reconnecting as planned."""
        drops = list(self.drops)
        last_id: str | None = None
        retry_ms: int | None = None
        while True:
            method, url, kwargs = self.request(base, last_id)
            async with aconnect_sse(http, method, url, **kwargs) as source:
                self.statuses.append(source.response.status_code)
                if source.response.status_code != 200:
                    return
                async for sse in source.aiter_sse():
                    if sse.retry is not None:
                        retry_ms = sse.retry
                        self.retries.append(sse.retry)
                    self.events.append(json.loads(sse.data))
                    self.ids.append(sse.id)
                    last_id = sse.id
                    if self.events[-1]["type"] == "done":
                        return
                    if drops and len(self.events) >= drops[0]:
                        drops.pop(0)
                        # drop somewhere in the pause before the next event: an event may
                        # be on its way, which the reader then never sees
                        await asyncio.sleep(self.rng.uniform(0, DELAY))
                        break
            dropped = time.monotonic()
            base_wait = self.fixed_wait if self.fixed_wait is not None else (retry_ms or 0) / 1000
            await asyncio.sleep(base_wait + self.rng.uniform(0, JITTER))
            self.waits.append(time.monotonic() - dropped)


def plan(seed: int, fixed_wait: float | None) -> list[Reader]:
    """One reader per run, each with its own seeded drop points and jitter."""
    readers = []
    for index in range(RUNS):
        rng = random.Random(seed * 1000 + index)
        if fixed_wait is None:  # two drops, the second after the first resume's catch-up
            first = rng.randint(2, 20)
            drops = [first, rng.randint(first + 8, TOTAL - 4)]
        else:  # one drop while at least 10 s of the run remain
            drops = [rng.randint(2, TOTAL - 23)]
        readers.append(Reader(MODES[index % len(MODES)], drops, rng, fixed_wait))
    return readers


def check_reader(reader: Reader) -> None:
    # every drop was followed by one reconnect that resumed (no 204, no 404, no new run)
    assert reader.statuses == [200] * (len(reader.drops) + 1), reader
    events = reader.events
    run_id = events[0]["run_id"]
    assert [event["seq"] for event in events] == list(range(1, TOTAL + 1)), reader
    assert reader.ids == [f"{run_id}:{event['seq']}" for event in events]
    assert {event["run_id"] for event in events} == {run_id}
    kinds = [event["type"] for event in events]
    assert kinds == ["run"] + ["progress"] * UPDATES + ["result", "done"]
    assert events[-1]["status"] == "completed"
    assert len(reader.waits) == len(reader.drops)


async def read_all(serve_app: Any, readers: list[Reader]) -> FakeDeployment:
    deployment = slow_deployment()
    timeout = httpx.Timeout(10.0, read=30.0)  # longer than the 10 s keep-alive
    limits = httpx.Limits(max_connections=2 * RUNS)
    with serve_app(make_app(deployment)) as server:
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
            async with asyncio.timeout(50):
                await asyncio.gather(*(reader.read(http, server.url) for reader in readers))
    return deployment


def check_deployment(deployment: FakeDeployment) -> None:
    assert len(deployment.calls) == RUNS  # a resume never started a run
    assert [call.cancelled for call in deployment.calls] == [False] * RUNS
    assert [call.finished for call in deployment.calls] == [True] * RUNS


async def test_runs_survive_clients_that_wait_the_retry_delay_plus_jitter(serve_app):
    readers = plan(seed=11, fixed_wait=None)
    assert sum(len(reader.drops) for reader in readers) >= 30
    deployment = await read_all(serve_app, readers)
    for reader in readers:
        check_reader(reader)
        # the client was told the default delay on each connection, and waited it
        assert reader.retries == [DEFAULT_RETRY_MS] * (len(reader.drops) + 1)
        assert all(wait >= DEFAULT_RETRY_MS / 1000 for wait in reader.waits)
    check_deployment(deployment)


async def test_runs_survive_clients_that_come_back_after_ten_seconds(serve_app):
    readers = plan(seed=12, fixed_wait=10.0)
    assert sum(len(reader.drops) for reader in readers) >= 30
    deployment = await read_all(serve_app, readers)
    for reader in readers:
        check_reader(reader)
        assert all(wait >= 10.0 for wait in reader.waits)
    check_deployment(deployment)
