"""Per-caller quotas: rejected requests and dropped streams leave nothing behind, and one
caller's flood cannot lock out another (real uvicorn server; memory and Redis stores)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import serve
from fastapi import FastAPI
from lifecycle_support import Job, Modes, bearer, eventually, jwt_auth, wait_finished
from redis_server import RedisServer, run_redis_server

from fastapi_ikstream import MemoryRunStore, Quotas, create_router
from fastapi_ikstream.redis import RedisRunStore
from fastapi_ikstream.security import APIKeyAuth

pytestmark = [pytest.mark.timeout(90), pytest.mark.redis]

API_KEY = "key-" + "k" * 30
MAX_BODY = 1000


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with run_redis_server() as server:
        yield server


def make_store(kind: str, redis_url: str, prefix: str, **memory: Any) -> Any:
    if kind == "memory":
        return MemoryRunStore(**memory)
    return RedisRunStore(redis_url, prefix=prefix, lease_seconds=1.0)


def auth_for(mode: str) -> Any:
    return {"jwt": jwt_auth(), "apikey": APIKeyAuth({API_KEY: "partner"}), "anonymous": None}[mode]


def good_headers(mode: str) -> dict[str, str]:
    if mode == "jwt":
        return bearer("principal")
    if mode == "apikey":
        return {"x-api-key": API_KEY}
    return {}


def rejected_kinds(mode: str) -> list[tuple[int, str, dict[str, Any]]]:
    """(status, path, request kwargs) for every kind of refusal this auth mode can give."""
    ok = good_headers(mode)
    raw = {**ok, "content-type": "application/json"}
    kinds: list[tuple[int, str, dict[str, Any]]] = [
        (422, "/gen/runs", {"headers": ok, "json": {"mode": "nope"}}),
        (422, "/gen/stream", {"headers": raw, "content": b"{not json"}),
        (422, "/gen", {"headers": ok, "json": {"steps": "many"}}),
        (406, "/gen/stream", {"headers": {**ok, "accept": "image/png"}, "json": {}}),
        (413, "/gen/runs", {"headers": raw, "content": b"[" + b"1," * MAX_BODY + b"1]"}),
        (429, "/limited/runs", {"headers": ok, "json": {}}),
    ]
    if mode == "jwt":
        kinds.append((401, "/gen/runs", {"headers": {}, "json": {}}))
        kinds.append((403, "/gen/stream", {"headers": bearer("principal", "other"), "json": {}}))
    if mode == "apikey":
        kinds.append((401, "/gen/runs", {"headers": {"x-api-key": "wrong"}, "json": {}}))
    return kinds


def quota_app(kind: str, mode: str, redis_url: str, prefix: str) -> FastAPI:
    common: dict[str, Any] = {
        "auth": auth_for(mode),
        "request_model": Job,
        "max_concurrent_runs": 2,
        "reconnect_grace": 0.15,
        "retry": 50,
        "keep_alive": 0.2,
        "drain_timeout": 0.3,
        "max_body_size": MAX_BODY,
        "quotas": Quotas(resumes=None),
    }
    shared = make_store(kind, redis_url, prefix)
    app = FastAPI()
    app.include_router(create_router(Modes(), path="/gen", store=shared, **common))
    # a second router on the same store, whose rate limit is spent after one request
    other = shared if kind == "memory" else make_store(kind, redis_url, prefix)
    app.include_router(
        create_router(Modes(), path="/limited", store=other, rate_limit="1/hour", **common)
    )
    return app


async def drop_after_first_event(
    client: httpx.AsyncClient, method: str, url: str, **kw: Any
) -> str:
    async with client.stream(method, url, **kw) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                break
        return response.headers["x-run-id"]


async def check_rejected_and_dropped_leave_both_slots_free(
    kind: str, mode: str, redis_url: str
) -> None:
    """1,000 rejected requests and 100 dropped streams; then exactly 2 runs, the third 429."""
    app = quota_app(kind, mode, redis_url, f"q{uuid.uuid4().hex[:8]}:")
    ok = good_headers(mode)
    async with httpx.AsyncClient(timeout=10) as client, asyncio.timeout(60):
        with serve(app) as server:
            url = server.url
            spent = await client.post(url + "/limited/runs", json={}, headers=ok)
            assert spent.status_code == 201  # the limited router's one request this hour
            await wait_finished(client, url + spent.json()["state_url"], ok)

            # the cap's 429 while both slots are held, then both are given back
            held = [
                await client.post(url + "/gen/runs", json={"mode": "slow"}, headers=ok)
                for _ in "ab"
            ]
            assert [r.status_code for r in held] == [201, 201]
            for response in [
                await client.post(url + "/gen/runs", json={}, headers=ok) for _ in range(20)
            ]:
                assert response.status_code == 429
                assert response.json()["detail"]["error"] == "too_many_runs"
                assert int(response.headers["retry-after"]) >= 1

            # 100 dropped streams: 80 readers of the two detached runs, 20 attached runs
            for created in held:
                for _ in range(4):
                    await asyncio.gather(
                        *(
                            drop_after_first_event(
                                client, "GET", url + created.json()["events_url"], headers=ok
                            )
                            for _ in range(10)
                        )
                    )
            for created in held:  # detached: no reader's departure ended them
                state = await client.get(url + created.json()["state_url"], headers=ok)
                assert state.json()["finished"] is False
                assert (
                    await client.delete(url + created.json()["cancel_url"], headers=ok)
                ).status_code == 202
                await wait_finished(client, url + created.json()["state_url"], ok)
            for _ in range(10):
                ids = await asyncio.gather(
                    *(
                        drop_after_first_event(
                            client, "POST", url + "/gen/stream", json={"mode": "slow"}, headers=ok
                        )
                        for _ in "ab"
                    )
                )
                for run_id in ids:  # each attached run ends once its grace has passed
                    await wait_finished(client, f"{url}/gen/runs/{run_id}", ok)

            # 1,000 rejected requests, every kind this auth mode has, 20 at a time
            kinds = list(itertools.islice(itertools.cycle(rejected_kinds(mode)), 1000))
            gate = asyncio.Semaphore(20)

            async def rejected(status: int, path: str, kw: dict[str, Any]) -> None:
                async with gate:
                    response = await client.post(url + path, **kw)
                assert response.status_code == status, (path, response.text)
                if status == 429:
                    assert int(response.headers["retry-after"]) >= 1

            await asyncio.gather(*(rejected(*k) for k in kinds))

            # exactly two runs now, and the third is refused with Retry-After
            two = [
                await client.post(url + "/gen/runs", json={"mode": "slow"}, headers=ok)
                for _ in "ab"
            ]
            assert [r.status_code for r in two] == [201, 201], [r.text for r in two]
            third = await client.post(url + "/gen/runs", json={}, headers=ok)
            assert third.status_code == 429
            assert int(third.headers["retry-after"]) >= 1
            for created in two:
                await client.delete(url + created.json()["cancel_url"], headers=ok)


@pytest.mark.parametrize("mode", ["jwt", "apikey", "anonymous"])
async def test_rejected_requests_and_dropped_streams_leave_both_run_slots_free_memory(
    mode: str, redis_server: RedisServer
) -> None:
    await check_rejected_and_dropped_leave_both_slots_free("memory", mode, redis_server.url)


async def test_a_flood_from_one_address_cannot_make_another_callers_run_get_503() -> None:
    store = MemoryRunStore(max_runs=150)  # room for one caller's quota, not for two
    router = create_router(
        Modes(),
        path="/gen",
        request_model=Job,
        store=store,
        quotas=Quotas(runs=100, streams=10, resumes=None),
        drain_timeout=0.3,
    )
    app = FastAPI()
    app.include_router(router)
    gate = asyncio.Semaphore(20)
    other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with (
        httpx.AsyncClient(timeout=10) as flooder,
        httpx.AsyncClient(timeout=10, transport=other) as neighbour,
        asyncio.timeout(60),
    ):
        with serve(app) as server:

            async def flood() -> int:
                async with gate:
                    response = await flooder.post(server.url + "/gen/runs", json={"mode": "slow"})
                return response.status_code

            statuses = await asyncio.gather(*(flood() for _ in range(1000)))
            assert statuses.count(201) == 100
            assert statuses.count(429) == 900
            assert store.active_runs("addr:127.0.0.1") == 100

            refused = await flooder.post(server.url + "/gen/runs", json={})
            assert refused.status_code == 429
            assert refused.json()["detail"]["error"] == "too_many_runs"
            assert int(refused.headers["retry-after"]) >= 1

            for _ in range(3):
                response = await neighbour.post(server.url + "/gen/runs", json={"mode": "slow"})
                assert response.status_code == 201, response.text
            assert store.active_runs("addr:127.0.0.2") == 3
            response = await neighbour.post(server.url + "/gen", json={})
            assert response.status_code == 200
            async with neighbour.stream("POST", server.url + "/gen/stream", json={}) as stream:
                assert stream.status_code == 200
                assert "event: done" in (await stream.aread()).decode()

        await eventually(lambda: not router.manager.runs, 5, "runs cancelled at shutdown")
    assert store.active_runs("addr:127.0.0.1") == 0
    assert store.active_runs("addr:127.0.0.2") == 0
