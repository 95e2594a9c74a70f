"""A detached run (``POST /runs``) ends only by finishing or by ``DELETE``, never by readers.

Ten readers connect to ``GET /runs/{id}/events`` at seeded random moments and drop after
seeded random times, on a real uvicorn server, with the router's default grace and with a
short one (``retry=100, reconnect_grace=0.3``, so the run spends many graces unwatched).
The run must still end with ``result``; a ``DELETE`` ends it with ``cancelled``. An
attached run (``POST /stream``) under the same short grace is cancelled once its reader
has gone: the contrast shows the setup would see a wrongful cancel.
"""

import asyncio
import json
import random
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from httpx_sse import aconnect_sse

from fastapi_ikstream import create_router
from fastapi_ikstream.testing import FakeDeployment

pytestmark = pytest.mark.timeout(60)

BODY: dict[str, object] = {"inputs": [], "parameters": {}}
READERS = 10
DELAY = 0.1
SHORT = {"retry": 100, "reconnect_grace": 0.3}
GRACES = [pytest.param({}, id="default-grace"), pytest.param(SHORT, id="short-grace")]


def deployment(updates: int) -> FakeDeployment:
    states: list[dict[str, Any]] = [
        {"state": "STARTED", "progress": {"current": i + 1, "total": updates}}
        for i in range(updates)
    ]
    states.append({"results": [{"DATA_DICT": {"ok": True}}]})
    return FakeDeployment(states, delay=DELAY)


def make_app(fake: FakeDeployment, options: dict[str, Any]) -> FastAPI:
    app = FastAPI()
    app.include_router(create_router(fake, path="/gen", **options), prefix="/api")
    return app


async def read_events(
    http: httpx.AsyncClient, url: str, *, seconds: float | None = None, **kwargs: Any
) -> list[dict[str, Any]]:
    """Read a stream for ``seconds`` (then drop it), or to its end when None."""
    got: list[dict[str, Any]] = []

    async def read() -> None:
        async with aconnect_sse(http, "GET", url, **kwargs) as source:
            assert source.response.status_code == 200
            async for sse in source.aiter_sse():
                data = json.loads(sse.data)
                assert sse.id == f"{data['run_id']}:{data['seq']}"
                got.append(data)

    if seconds is None:
        await read()
    else:
        try:
            async with asyncio.timeout(seconds):  # the drop: the connection is closed
                await read()
        except TimeoutError:
            pass
    return got


async def connect_and_drop(
    http: httpx.AsyncClient, url: str, seed: int
) -> list[list[dict[str, Any]]]:
    """Ten readers, each joining after a seeded delay and dropping after a seeded time."""
    rng = random.Random(seed)
    plan = [(rng.uniform(0, 1.0), rng.uniform(0.05, 1.0)) for _ in range(READERS)]

    async def reader(start: float, seconds: float) -> list[dict[str, Any]]:
        await asyncio.sleep(start)
        return await read_events(http, url, seconds=seconds)

    return list(await asyncio.gather(*(reader(start, seconds) for start, seconds in plan)))


async def wait_finished(http: httpx.AsyncClient, state_url: str) -> dict[str, Any]:
    while True:
        state: dict[str, Any] = (await http.get(state_url)).json()
        if state["finished"]:
            return state
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("options", GRACES)
async def test_detached_run_survives_ten_readers_that_connect_and_drop(serve_app, options):
    updates = 40  # 4 s: the readers are all gone after about 2 s
    fake = deployment(updates)
    with serve_app(make_app(fake, options)) as server:
        base = f"{server.url}/api/gen"
        async with httpx.AsyncClient(timeout=10) as http, asyncio.timeout(30):
            created = await http.post(f"{base}/runs", json=BODY)
            assert created.status_code == 201
            run_id = created.json()["run_id"]
            events_url = f"{base}/runs/{run_id}/events"
            seen = await connect_and_drop(http, events_url, seed=len(options))
            state = await wait_finished(http, f"{base}/runs/{run_id}")
            final = await read_events(http, events_url)
    assert len(seen) == READERS
    for got in seen:
        assert [event["seq"] for event in got] == list(range(1, len(got) + 1))  # a prefix
        assert "cancelled" not in [event["type"] for event in got]
    assert state["status"] == "completed"
    assert [event["seq"] for event in final] == list(range(1, updates + 4))
    assert [event["type"] for event in final[-2:]] == ["result", "done"]
    assert len(fake.calls) == 1
    assert fake.calls[0].finished
    assert not fake.calls[0].cancelled


async def test_detached_run_nobody_reads_runs_to_the_end(serve_app):
    fake = deployment(10)
    with serve_app(make_app(fake, SHORT)) as server:
        base = f"{server.url}/api/gen"
        async with httpx.AsyncClient(timeout=10) as http, asyncio.timeout(20):
            created = await http.post(f"{base}/runs", json=BODY)
            run_id = created.json()["run_id"]
            state = await wait_finished(http, f"{base}/runs/{run_id}")
    assert state["status"] == "completed"
    assert fake.calls[0].finished
    assert not fake.calls[0].cancelled


@pytest.mark.parametrize("options", GRACES)
async def test_delete_ends_a_detached_run_that_readers_came_and_left(serve_app, options):
    fake = deployment(300)  # 30 s: only the DELETE can end it within the test
    with serve_app(make_app(fake, options)) as server:
        base = f"{server.url}/api/gen"
        async with httpx.AsyncClient(timeout=10) as http, asyncio.timeout(30):
            created = await http.post(f"{base}/runs", json=BODY)
            run_id = created.json()["run_id"]
            events_url = f"{base}/runs/{run_id}/events"
            seen = await connect_and_drop(http, events_url, seed=100 + len(options))
            await asyncio.sleep(1.0)  # in the short case: unwatched for three graces
            watcher = asyncio.create_task(read_events(http, events_url))
            assert not fake.calls[0].ended.is_set()  # the readers' departures ended nothing
            deleted = await http.delete(f"{base}/runs/{run_id}")
            watched = await watcher
            state = await wait_finished(http, f"{base}/runs/{run_id}")
            again = await http.delete(f"{base}/runs/{run_id}")
    assert all(event["type"] != "cancelled" for got in seen for event in got)
    assert deleted.status_code == 202
    kinds = [event["type"] for event in watched]
    assert kinds[-2:] == ["cancelled", "done"]
    assert kinds.count("cancelled") == 1
    assert "result" not in kinds
    assert [event["seq"] for event in watched] == list(range(1, len(watched) + 1))
    assert state["status"] == "cancelled"
    assert again.status_code == 200  # it had ended: nothing to cancel
    assert await fake.calls[0].wait_ended(5)
    assert fake.calls[0].cancelled
    assert not fake.calls[0].finished


async def test_attached_run_is_cancelled_once_its_reader_is_gone_for_the_grace(serve_app):
    fake = deployment(100)  # 10 s
    with serve_app(make_app(fake, SHORT)) as server:
        base = f"{server.url}/api/gen"
        async with httpx.AsyncClient(timeout=10) as http, asyncio.timeout(20):
            got: list[dict[str, Any]] = []
            async with aconnect_sse(
                http, "POST", f"{base}/stream", json=BODY, headers={"Accept": "text/event-stream"}
            ) as source:
                async for sse in source.aiter_sse():
                    got.append(json.loads(sse.data))
                    if len(got) == 3:
                        break
            assert await fake.calls[0].wait_ended(5)
            state = await wait_finished(http, f"{base}/runs/{got[0]['run_id']}")
    assert state["status"] == "cancelled"
    assert fake.calls[0].cancelled
