"""Runs that outlive a connection, on a real uvicorn server with the memory store.

Resume with ``Last-Event-ID`` (header, ``?last_event_id=``, ``?after_seq=``), re-POST resume,
204 after ``done``, cancel, several watchers, access by principal, ``reset`` for cursors
older than the kept window, the store's bounds and the disconnect policies.
"""

import asyncio
import contextlib
import json
import random
import re
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request
from httpx_sse import aconnect_sse

from fastapi_ikstream import MemoryRunStore, create_router
from fastapi_ikstream.testing import FakeDeployment

pytestmark = pytest.mark.timeout(30)

BODY: dict[str, Any] = {"inputs": [], "parameters": {}}
Event = dict[str, Any]


def fake(n: int, *, delay: float = 0.0) -> FakeDeployment:
    """A deployment whose run has ``n + 3`` events: run, ``n`` progress, result, done."""
    updates: list[dict[str, Any]] = [
        {"state": "STARTED", "progress": {"current": i + 1, "total": n}} for i in range(n)
    ]
    updates.append({"results": [{"DATA_DICT": {"n": n}}]})
    return FakeDeployment(updates, delay=delay)


def make_app(deployment: Any, **options: Any) -> tuple[FastAPI, Any]:
    app = FastAPI()
    options.setdefault("retry", 100)
    router = create_router(deployment, path="/gen", **options)
    app.include_router(router, prefix="/api")
    return app, router


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(10.0), limits=httpx.Limits(max_connections=300))


async def read_sse(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    limit: int | None = None,
    last_event_id: str | None = None,
    **kwargs: Any,
) -> tuple[httpx.Response, list[Event]]:
    """Read SSE events, checking each id and name; stop (drop) after ``limit`` events."""
    headers = dict(kwargs.pop("headers", {}))
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    events: list[Event] = []
    async with aconnect_sse(http, method, url, headers=headers, **kwargs) as source:
        response = source.response
        if response.status_code != 200:
            await response.aread()
            return response, events
        async with contextlib.aclosing(source.aiter_sse()) as stream:
            async for sse in stream:
                data = json.loads(sse.data)
                assert sse.id == f"{data['run_id']}:{data['seq']}"
                assert sse.event == data["type"]
                events.append(data)
                if limit is not None and len(events) >= limit:
                    break
    return response, events


async def read_jsonl(
    http: httpx.AsyncClient, url: str, *, limit: int | None = None, **kwargs: Any
) -> tuple[httpx.Response, list[Event]]:
    """Read JSON lines (keep-alives left out); stop (drop) after ``limit`` events."""
    events: list[Event] = []
    headers = {"accept": "application/jsonl", **kwargs.pop("headers", {})}
    method = "POST" if "json" in kwargs else "GET"
    async with http.stream(method, url, headers=headers, **kwargs) as response:
        if response.status_code != 200:
            await response.aread()
            return response, events
        assert response.headers["content-type"].startswith("application/jsonl")
        async with contextlib.aclosing(response.aiter_lines()) as lines:  # type: ignore[type-var]
            async for line in lines:
                if not line:
                    continue
                item = json.loads(line)
                if item["type"] == "keepalive":
                    continue
                events.append(item)
                if limit is not None and len(events) >= limit:
                    break
    return response, events


def event_id(event: Event) -> str:
    return f"{event['run_id']}:{event['seq']}"


def seqs(events: list[Event]) -> list[int]:
    return [event["seq"] for event in events]


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate``: it reads state that the server's thread and loop change."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - no event can cross the two loops
            await asyncio.sleep(0.01)


async def state_of(http: httpx.AsyncClient, url: str, run_id: str, **kwargs: Any) -> Any:
    return await http.get(f"{url}/api/gen/runs/{run_id}", **kwargs)


async def wait_finished(http: httpx.AsyncClient, url: str, run_id: str) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            snapshot = (await state_of(http, url, run_id)).json()
            if snapshot["finished"]:
                return dict(snapshot)
            await asyncio.sleep(0.01)


async def resume(
    http: httpx.AsyncClient, url: str, mode: str, run_id: str, cursor: int, limit: int | None
) -> tuple[httpx.Response, list[Event]]:
    """Reconnect after ``cursor`` the way a client of kind ``mode`` does."""
    events_url = f"{url}/api/gen/runs/{run_id}/events"
    last = f"{run_id}:{cursor}"
    if mode == "post":  # @microsoft/fetch-event-source re-sends the original POST
        return await read_sse(
            http, "POST", f"{url}/api/gen/stream", json=BODY, last_event_id=last, limit=limit
        )
    if mode == "header":
        return await read_sse(http, "GET", events_url, last_event_id=last, limit=limit)
    if mode == "query":
        return await read_sse(http, "GET", events_url, params={"last_event_id": last}, limit=limit)
    assert mode == "jsonl"
    return await read_jsonl(http, events_url, params={"after_seq": cursor}, limit=limit)


@pytest.mark.parametrize("mode", ["post", "header", "query", "jsonl"])
@pytest.mark.parametrize("k", [1, 4])
async def test_drop_after_event_k_and_resume_gets_the_rest_once(serve_app, mode, k):
    deployment = fake(6, delay=0.02)
    total = 6 + 3
    app, _ = make_app(deployment)
    with serve_app(app) as server:
        async with client() as http:
            if mode == "jsonl":
                response, first = await read_jsonl(
                    http, server.url + "/api/gen/stream", json=BODY, limit=k
                )
            else:
                response, first = await read_sse(
                    http, "POST", server.url + "/api/gen/stream", json=BODY, limit=k
                )
            run_id = response.headers["x-run-id"]
            assert seqs(first) == list(range(1, k + 1))
            response, rest = await resume(http, server.url, mode, run_id, k, None)
            assert response.status_code == 200
            assert response.headers["x-run-id"] == run_id
    assert seqs(rest) == list(range(k + 1, total + 1))
    events = first + rest
    assert {event["run_id"] for event in events} == {run_id}
    assert [event["type"] for event in events] == ["run"] + ["progress"] * 6 + ["result", "done"]
    assert len(deployment.calls) == 1, "a resume must not open another run"
    assert deployment.calls[0].finished
    assert not deployment.calls[0].cancelled


async def test_random_drops_over_many_runs_lose_and_repeat_nothing(serve_app):
    rng = random.Random(20240607)
    n = 8
    total = n + 3
    deployment = fake(n, delay=0.01)
    app, _ = make_app(deployment)

    async def watch(
        http: httpx.AsyncClient, url: str, start: str, drops: list[int], modes: list[str]
    ) -> list[Event]:
        """Read the run, dropping the connection after each of ``drops`` events in all."""
        if start == "detached":
            created = await http.post(url + "/api/gen/runs", json=BODY)
            assert created.status_code == 201
            run_id = created.json()["run_id"]
            _, events = await read_sse(
                http, "GET", f"{url}/api/gen/runs/{run_id}/events", limit=drops[0]
            )
        else:
            response, events = await read_sse(
                http, "POST", url + "/api/gen/stream", json=BODY, limit=drops[0]
            )
            run_id = response.headers["x-run-id"]
        assert len(events) == drops[0]
        for index, mode in enumerate(modes):
            limit = drops[index + 1] - len(events) if index + 1 < len(drops) else None
            response, more = await resume(http, url, mode, run_id, events[-1]["seq"], limit)
            assert response.status_code == 200, response.status_code
            events.extend(more)
        return events

    plans = []
    for _ in range(30):
        drops = sorted(rng.sample(range(1, total), rng.randint(1, 3)))
        modes = [rng.choice(["post", "header", "query", "jsonl"]) for _ in drops]
        plans.append((rng.choice(["stream", "detached"]), drops, modes))
    with serve_app(app) as server:
        async with client() as http:
            results = await asyncio.gather(*(watch(http, server.url, *plan) for plan in plans))
    assert len(results) == 30
    for events in results:
        assert seqs(events) == list(range(1, total + 1))
        assert events[-1]["type"] == "done"
        assert events[-2]["type"] == "result"
        assert len({event["run_id"] for event in events}) == 1
    assert len({events[0]["run_id"] for events in results}) == 30
    assert len(deployment.calls) == 30
    assert all(call.finished and not call.cancelled for call in deployment.calls)


async def test_reconnect_after_done_gets_204(serve_app):
    app, _ = make_app(fake(2))
    with serve_app(app) as server:
        async with client() as http:
            _response, events = await read_sse(
                http, "POST", server.url + "/api/gen/stream", json=BODY
            )
            assert events[-1]["type"] == "done"
            run_id, final = events[-1]["run_id"], event_id(events[-1])
            events_url = f"{server.url}/api/gen/runs/{run_id}/events"
            answers = [
                await http.get(events_url, headers={"Last-Event-ID": final}),
                await http.get(events_url, params={"last_event_id": final}),
                await http.get(
                    events_url,
                    params={"after_seq": events[-1]["seq"]},
                    headers={"accept": "application/jsonl"},
                ),
                await http.post(
                    server.url + "/api/gen/stream", json=BODY, headers={"Last-Event-ID": final}
                ),
            ]
            assert [answer.status_code for answer in answers] == [204] * 4
            assert all(answer.content == b"" for answer in answers)
            # one event short of the end: the last event, then the stream closes
            _, tail = await read_sse(http, "GET", events_url, last_event_id=event_id(events[-2]))
            assert tail == [events[-1]]


async def test_delete_cancels_the_run_and_the_stream_ends_cancelled_then_done(serve_app):
    deployment = fake(50, delay=0.05)
    app, _ = make_app(deployment)
    with serve_app(app) as server:
        async with client() as http:
            created = await http.post(server.url + "/api/gen/runs", json=BODY)
            assert created.status_code == 201
            body = created.json()
            run_id = body["run_id"]
            assert body["events_url"] == f"/api/gen/runs/{run_id}/events"
            assert body["cancel_url"] == body["state_url"] == f"/api/gen/runs/{run_id}"
            http.base_url = httpx.URL(server.url)  # the URLs are paths: no Host header echoed
            events: list[Event] = []
            started = time.monotonic()
            async with aconnect_sse(http, "GET", body["events_url"]) as source:
                async for sse in source.aiter_sse():
                    events.append(json.loads(sse.data))
                    if len(events) == 2:
                        cancelled = await http.delete(body["cancel_url"])
                        assert cancelled.status_code == 202
                        assert cancelled.json()["run_id"] == run_id
            assert time.monotonic() - started < 1.5, "the cancel must end the stream at once"
            assert [event["type"] for event in events[-2:]] == ["cancelled", "done"]
            assert events[-2]["error"]["code"] == "cancelled"
            assert events[-2]["error"]["message"] == "cancelled by the client"
            assert seqs(events) == list(range(1, len(events) + 1))
            snapshot = await wait_finished(http, server.url, run_id)
            assert snapshot["status"] == "cancelled"
            again = await http.delete(body["cancel_url"])
            assert again.status_code == 200
            assert again.json()["finished"] is True
            await wait_until(lambda: deployment.calls[0].cancelled)
    assert len(deployment.calls) == 1
    assert not deployment.calls[0].finished
    assert deployment.calls[0].sent < 50


async def test_two_watchers_of_one_run_see_the_same_events_and_it_runs_once(serve_app):
    deployment = fake(10, delay=0.02)
    app, _ = make_app(deployment)
    with serve_app(app) as server:
        async with client() as http:
            created = await http.post(server.url + "/api/gen/runs", json=BODY)
            events_url = server.url + created.json()["events_url"]
            (_, first), (_, second), (_, lines) = await asyncio.gather(
                read_sse(http, "GET", events_url),
                read_sse(http, "GET", events_url),
                read_jsonl(http, events_url),
            )
    assert first == second == lines
    assert seqs(first) == list(range(1, 14))
    assert first[-1]["type"] == "done"
    assert len(deployment.calls) == 1
    assert deployment.calls[0].sent == 11


class HeaderAuth:
    """Who calls: the ``X-User`` header (401 without it)."""

    async def __call__(self, request: Request) -> SimpleNamespace:
        user = request.headers.get("x-user")
        if not user:
            raise HTTPException(401, detail="Who are you?")
        return SimpleNamespace(subject=user)


async def test_another_principal_gets_404_and_cannot_resume_or_start_by_naming_the_run(serve_app):
    deployment = fake(20, delay=0.02)
    app, _ = make_app(deployment, auth=HeaderAuth())
    alice, bob = {"x-user": "alice"}, {"x-user": "bob"}
    with serve_app(app) as server:
        async with client() as http:
            created = await http.post(server.url + "/api/gen/runs", json=BODY, headers=alice)
            assert created.status_code == 201
            run_id = created.json()["run_id"]
            events_url = server.url + created.json()["events_url"]
            assert (await http.post(server.url + "/api/gen/runs", json=BODY)).status_code == 401
            for headers, status in ((bob, 404), ({}, 401)):
                answers = [
                    await state_of(http, server.url, run_id, headers=headers),
                    await http.get(events_url, headers=headers),
                    await http.get(
                        events_url, headers=headers, params={"last_event_id": f"{run_id}:1"}
                    ),
                    await http.delete(f"{server.url}/api/gen/runs/{run_id}", headers=headers),
                ]
                assert [answer.status_code for answer in answers] == [status] * 4
                assert all("detail" in answer.json() for answer in answers)
            # Bob's re-POST naming Alice's run is told it does not exist, and starts nothing
            refused = await http.post(
                server.url + "/api/gen/stream",
                json=BODY,
                headers={**bob, "Last-Event-ID": f"{run_id}:1"},
            )
            assert refused.status_code == 404
            assert refused.json()["detail"]["error"] == "run_not_found"
            _, alices = await read_sse(http, "GET", events_url, headers=alice)
            assert seqs(alices) == list(range(1, 24))
            assert alices[-2]["type"] == "result"
    assert len(deployment.calls) == 1
    assert not any(call.cancelled for call in deployment.calls)


async def test_run_ids_are_unguessable(serve_app):
    app, _ = make_app(fake(0))
    with serve_app(app) as server:
        async with client() as http:
            answers = await asyncio.gather(
                *(http.post(server.url + "/api/gen/runs", json=BODY) for _ in range(40))
            )
            run_ids = [answer.json()["run_id"] for answer in answers]
            made_up = "r_" + "0" * 24
            missing = await http.get(f"{server.url}/api/gen/runs/{made_up}/events")
            assert missing.status_code == 404
    assert all(re.fullmatch(r"r_[0-9a-f]{24}", run_id) for run_id in run_ids), run_ids
    assert len(set(run_ids)) == 40
    assert made_up not in run_ids


async def test_cursor_older_than_the_kept_window_gets_reset_then_the_kept_events(serve_app):
    store = MemoryRunStore(max_events_per_run=4)
    app, _ = make_app(fake(12), store=store)
    total = 12 + 3
    with serve_app(app) as server:
        async with client() as http:
            response, _ = await read_sse(
                http, "POST", server.url + "/api/gen/stream", json=BODY, limit=1
            )
            run_id = response.headers["x-run-id"]
            await wait_finished(http, server.url, run_id)
            events_url = f"{server.url}/api/gen/runs/{run_id}/events"
            _, events = await read_sse(http, "GET", events_url, last_event_id=f"{run_id}:1")
            _, lines = await read_jsonl(http, events_url, params={"after_seq": 1})
            reset = events[0]
            first_seq = reset["first_seq"]
            _, after_reset = await read_sse(http, "GET", events_url, last_event_id=event_id(reset))
            _, in_window = await read_sse(
                http, "GET", events_url, last_event_id=f"{run_id}:{first_seq}"
            )
    assert reset["type"] == "reset"
    assert reset["seq"] == first_seq - 1
    assert 4 <= total - first_seq + 1 <= 5, "the store keeps max_events_per_run (+ a quarter)"
    assert seqs(events[1:]) == list(range(first_seq, total + 1))
    assert events[-1]["type"] == "done"
    assert lines == events
    assert after_reset == events[1:]
    assert in_window == events[2:]


async def test_memory_store_evicts_old_finished_runs_and_refuses_when_full(serve_app):
    store = MemoryRunStore(max_runs=2)
    quick, slow = fake(1), fake(40, delay=0.05)
    app, router = make_app(quick, store=store)
    with serve_app(app) as server:
        async with client() as http:
            runs = [
                (await http.post(server.url + "/api/gen", json=BODY)).json()["run_id"]
                for _ in range(3)
            ]
            statuses = [(await state_of(http, server.url, r)).status_code for r in runs]
            assert statuses == [404, 200, 200], "the oldest finished run makes room"

            app.dependency_overrides[router.deployment_provider] = lambda: slow
            running = [
                (await http.post(server.url + "/api/gen/runs", json=BODY)).json()["run_id"]
                for _ in range(2)
            ]
            refused = [
                await http.post(server.url + "/api/gen/runs", json=BODY),
                await http.post(server.url + "/api/gen/stream", json=BODY),
                await http.post(server.url + "/api/gen", json=BODY),
            ]
            assert [answer.status_code for answer in refused] == [503] * 3
            for answer in refused:
                assert answer.headers["content-type"] == "application/json"
                assert answer.json()["detail"]["error"] == "store_full"
            assert len(slow.calls) == 5
            refused_calls = slow.calls[2:]

            await http.delete(f"{server.url}/api/gen/runs/{running[0]}")
            await wait_finished(http, server.url, running[0])
            accepted = await http.post(server.url + "/api/gen/runs", json=BODY)
            assert accepted.status_code == 201
            assert (await state_of(http, server.url, running[0])).status_code == 404
            assert (await state_of(http, server.url, running[1])).status_code == 200
            for run_id in (running[1], accepted.json()["run_id"]):
                await http.delete(f"{server.url}/api/gen/runs/{run_id}")
    # the refused requests never ran the deployment
    assert [call.sent for call in refused_calls] == [0, 0, 0]
    assert not any(call.finished or call.cancelled for call in refused_calls)


async def test_finished_runs_expire_after_the_retention(serve_app):
    app, _ = make_app(fake(1), store=MemoryRunStore(retention=0.2))
    with serve_app(app) as server:
        async with client() as http:
            run_id = (await http.post(server.url + "/api/gen", json=BODY)).json()["run_id"]
            assert (await state_of(http, server.url, run_id)).status_code == 200
            await asyncio.sleep(0.3)
            assert (await state_of(http, server.url, run_id)).status_code == 404
            events = await http.get(f"{server.url}/api/gen/runs/{run_id}/events")
            assert events.status_code == 404


async def test_cancel_policy_cancels_after_the_grace_unless_a_reader_comes_back(serve_app):
    deployment = fake(16, delay=0.04)
    app, _ = make_app(deployment, on_disconnect="cancel", reconnect_grace=0.3)
    with serve_app(app) as server:
        async with client() as http:
            response, first = await read_sse(
                http, "POST", server.url + "/api/gen/stream", json=BODY, limit=2
            )
            dropped = time.monotonic()
            run_id = response.headers["x-run-id"]
            await wait_until(lambda: deployment.calls[0].cancelled, timeout=2)
            waited = time.monotonic() - dropped
            assert 0.3 <= waited < 1.0, waited
            _, rest = await read_sse(
                http,
                "GET",
                f"{server.url}/api/gen/runs/{run_id}/events",
                last_event_id=event_id(first[-1]),
            )
            assert seqs(first + rest) == list(range(1, len(first + rest) + 1))
            assert [event["type"] for event in rest[-2:]] == ["cancelled", "done"]
            assert rest[-2]["error"]["message"] == "the client went away"

            # back within the grace: the run goes on to its result
            response, first = await read_sse(
                http, "POST", server.url + "/api/gen/stream", json=BODY, limit=2
            )
            await asyncio.sleep(0.1)
            _, rest = await read_sse(
                http,
                "GET",
                f"{server.url}/api/gen/runs/{response.headers['x-run-id']}/events",
                last_event_id=event_id(first[-1]),
            )
    assert seqs(first + rest) == list(range(1, 20))
    assert rest[-2]["type"] == "result"
    assert deployment.calls[1].finished
    assert not deployment.calls[1].cancelled


async def test_continue_policy_finishes_without_a_reader_and_keeps_the_events(serve_app):
    deployment = fake(10, delay=0.02)
    app, _ = make_app(deployment, on_disconnect="continue", reconnect_grace=0.05)
    with serve_app(app) as server:
        async with client() as http:
            response, first = await read_sse(
                http, "POST", server.url + "/api/gen/stream", json=BODY, limit=2
            )
            run_id = response.headers["x-run-id"]
            await wait_until(lambda: deployment.calls[0].finished, timeout=3)
            snapshot = await wait_finished(http, server.url, run_id)
            assert snapshot["status"] == "completed"
            assert snapshot["last_seq"] == 13
            assert snapshot["latest"]["type"] == "result"
            _, rest = await read_sse(
                http,
                "GET",
                f"{server.url}/api/gen/runs/{run_id}/events",
                last_event_id=event_id(first[-1]),
            )
    assert seqs(first + rest) == list(range(1, 14))
    assert not deployment.calls[0].cancelled


async def test_two_routers_sharing_one_store_both_honour_cancels():
    from fastapi_ikstream import MemoryRunStore

    store = MemoryRunStore()
    first = FakeDeployment(
        [{"progress": {"current": i, "total": 99}} for i in range(99)], delay=0.02
    )
    second = FakeDeployment(
        [{"progress": {"current": i, "total": 99}} for i in range(99)], delay=0.02
    )
    app = FastAPI()
    app.include_router(create_router(first, path="/one", store=store), prefix="/api")
    app.include_router(create_router(second, path="/two", store=store), prefix="/api")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for name, fake in (("one", first), ("two", second)):
            created = await client.post(f"/api/{name}/runs", json={})
            assert created.status_code == 201
            for _ in range(200):  # let the run start
                if fake.calls[0].sent:
                    break
                await asyncio.sleep(0.01)
            cancel = await client.delete(created.json()["cancel_url"].replace("http://t", ""))
            assert cancel.status_code == 202
            assert await fake.calls[0].wait_ended(2)
            assert fake.calls[0].cancelled


async def test_a_cancel_before_the_run_has_started_still_ends_it():
    fake = FakeDeployment([{"state": "STARTED"}], delay=0.01)
    app = FastAPI()
    app.include_router(create_router(fake, path="/gen"), prefix="/api")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        created = await client.post("/api/gen/runs", json={})
        run_id = created.json()["run_id"]
        # no await has let the run's task take a step yet
        assert (await client.delete(f"/api/gen/runs/{run_id}")).status_code == 202
        events = await client.get(f"/api/gen/runs/{run_id}/events")
        kinds = [
            json.loads(line[6:])["type"]
            for line in events.text.splitlines()
            if line.startswith("data: ")
        ]
        assert kinds == ["run", "cancelled", "done"]
        assert fake.calls[0].sent == 0
