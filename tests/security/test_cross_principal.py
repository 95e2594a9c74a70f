"""The cross-principal matrix: one principal's run, probed by every other caller, on the
memory store and on a real Redis (one worker, and two workers sharing it: the owner on one,
the probes on the other), through two routers (JWT and API key) sharing the store, with
callers of equal subjects under both schemes.

Every probe of a run that is not the caller's answers as if the run did not exist (404),
or 401 without credentials; a resume attempt with another caller's Last-Event-ID gets the
same 404 as one naming no run, and starts nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from apps.jobs import slow_job
from attack_kit import AUDIENCE, SECRET
from conftest import ThreadServer, serve
from fastapi import FastAPI
from redis_server import run_redis_server

from fastapi_ikstream import MemoryRunStore, RunStore, create_router
from fastapi_ikstream.redis import RedisRunStore
from fastapi_ikstream.security import APIKeyAuth, JWTBearer, create_access_token

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with run_redis_server() as server:
        yield server.url


def make_store(kind: str, redis_url: str) -> RunStore:
    if kind == "redis":
        return RedisRunStore(redis_url, prefix=f"x{uuid.uuid4().hex[:8]}:")
    return MemoryRunStore()


KEYS = {
    "key-carol-0123456789": "carol",
    "key-dave-0123456789": "dave",
    "key-alice-0123456789": "alice",  # the subject of a JWT caller too
}


def make_app(store: RunStore) -> FastAPI:
    jwt = JWTBearer(secret=SECRET, algorithms=["HS256"], audience=AUDIENCE)
    app = FastAPI()
    app.include_router(create_router(slow_job, path="/jwt", auth=jwt, store=store))
    app.include_router(create_router(slow_job, path="/key", auth=APIKeyAuth(KEYS), store=store))
    return app


@pytest.fixture(params=["memory", "redis", "redis-2-workers"])
def servers(request: pytest.FixtureRequest, redis_url: str) -> Iterator[list[ThreadServer]]:
    """The owner's worker first, the probes' worker last (the same one, but for two)."""
    kind = "memory" if request.param == "memory" else "redis"
    store = make_store(kind, redis_url)
    with serve(make_app(store)) as first:
        if request.param != "redis-2-workers":
            yield [first]
            return
        assert isinstance(store, RedisRunStore)
        other = RedisRunStore(redis_url, prefix=store.prefix)  # the second worker's own
        with serve(make_app(other)) as second:
            yield [first, second]


def bearer(subject: str) -> dict[str, str]:
    token = create_access_token({"sub": subject, "aud": AUDIENCE}, secret_or_key=SECRET)
    return {"Authorization": f"Bearer {token}"}


def callers() -> dict[str, tuple[str, dict[str, str]]]:
    """Caller name -> (router path, headers)."""
    return {
        "bob by JWT": ("/jwt", bearer("bob")),
        "dave by API key": ("/key", {"X-API-Key": "key-dave-0123456789"}),
        "carol by API key on the JWT router": ("/jwt", {"X-API-Key": "key-carol-0123456789"}),
        "alice by API key": ("/key", {"X-API-Key": "key-alice-0123456789"}),
        "carol by JWT": ("/jwt", bearer("carol")),
        "anonymous on the JWT router": ("/jwt", {}),
        "anonymous on the key router": ("/key", {}),
    }


OWNERS = {
    "alice by JWT": ("/jwt", lambda: bearer("alice")),
    "carol by API key": ("/key", lambda: {"X-API-Key": "key-carol-0123456789"}),
}


async def probes(http: httpx.AsyncClient, path: str, run_id: str, headers: Any) -> list[int]:
    statuses = []
    for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/events")):
        response = await http.request(method, f"{path}/runs/{run_id}{suffix}", headers=headers)
        assert response.headers["content-type"] == "application/json"
        assert run_id not in response.text
        statuses.append(response.status_code)
    events = await http.get(
        f"{path}/runs/{run_id}/events", params={"last_event_id": f"{run_id}:0"}, headers=headers
    )
    statuses.append(events.status_code)
    return statuses


@pytest.mark.parametrize("owner", OWNERS, ids=OWNERS.keys())
async def test_no_caller_reaches_another_callers_run(
    servers: list[ThreadServer], owner: str
) -> None:
    owner_path, owner_headers = OWNERS[owner][0], OWNERS[owner][1]()
    async with (
        httpx.AsyncClient(base_url=servers[0].url, timeout=20) as mine,
        httpx.AsyncClient(base_url=servers[-1].url, timeout=20) as http,
    ):
        created = await mine.post(
            f"{owner_path}/runs", json={"parameters": {"steps": 40}}, headers=owner_headers
        )
        assert created.status_code == 201
        run_id = created.json()["run_id"]
        leaks = []
        for name, (path, headers) in callers().items():
            statuses = await probes(http, path, run_id, headers)
            expected = 401 if not headers or (path == "/jwt" and "X-API-Key" in headers) else 404
            if statuses != [expected] * 4:
                leaks.append((name, statuses))
            # a resume with the owner's event id is refused exactly as one naming no run is
            # (it never starts work, and tells nothing of the owner's run)
            if expected == 404:
                answers = []
                for cursor in (f"{run_id}:1", "r_000000000000000000000000:1"):
                    resumed = await http.post(
                        f"{path}/stream",
                        json={"parameters": {"steps": 1}},
                        headers={**headers, "Last-Event-ID": cursor},
                    )
                    assert resumed.headers["content-type"] == "application/json"
                    assert run_id not in resumed.text
                    answers.append((resumed.status_code, resumed.json()["detail"]["error"]))
                assert answers == [(404, "run_not_found")] * 2, name
        # the owner still reaches it, from either worker, and no probe cancelled it
        for client in (mine, http):
            state = await client.get(f"{owner_path}/runs/{run_id}", headers=owner_headers)
            assert state.status_code == 200
            assert state.json()["status"] in ("received", "queued", "running")
        await http.delete(f"{owner_path}/runs/{run_id}", headers=owner_headers)
    assert leaks == []


async def test_the_owner_on_the_other_router_is_another_caller(
    servers: list[ThreadServer],
) -> None:
    """A run is reachable through the router that made it, by its owner, and not through the
    other router by the same subject under the other scheme."""
    async with httpx.AsyncClient(base_url=servers[-1].url, timeout=20) as http:
        created = await http.post(
            "/jwt/runs", json={"parameters": {"steps": 40}}, headers=bearer("alice")
        )
        run_id = created.json()["run_id"]
        mine = await http.get(f"/jwt/runs/{run_id}", headers=bearer("alice"))
        assert mine.status_code == 200
        alias = await http.get(f"/key/runs/{run_id}", headers={"X-API-Key": "key-alice-0123456789"})
        assert alias.status_code == 404
        await http.delete(f"/jwt/runs/{run_id}", headers=bearer("alice"))
