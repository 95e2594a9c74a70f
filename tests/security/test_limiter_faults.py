"""The limiter's storage failure policy (``fail_open``) with a real redis-server killed by
pid, and the IETF ``RateLimit``/``RateLimit-Policy`` headers."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from apps.jobs import slow_job
from attack_kit import kill_redis, start_redis_on
from conftest import free_port, serve
from fastapi import FastAPI, HTTPException, Request
from redis_server import RedisServer

from fastapi_ikstream import create_router
from fastapi_ikstream.ratelimit import ConcurrencyLimit, RateLimit

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = start_redis_on(free_port())
    try:
        yield server
    finally:
        kill_redis(server)


def fake_request() -> Request:
    return Request({"type": "http", "headers": [], "client": ("10.0.0.1", 1234)})


@pytest.mark.parametrize("fail_open", [False, True])
async def test_rate_limit_when_redis_is_killed(redis_server: RedisServer, fail_open: bool) -> None:
    limit = RateLimit(
        "100/minute", storage_uri=redis_server.url, scope=uuid.uuid4().hex, fail_open=fail_open
    )
    try:
        assert (await limit.hit(fake_request()))["X-RateLimit-Remaining"] == "99"
        kill_redis(redis_server)
        if fail_open:
            assert await limit.hit(fake_request()) == {}  # let through, uncounted
        else:
            with pytest.raises(HTTPException) as refused:
                await limit.hit(fake_request())
            assert refused.value.status_code == 503
            detail: Any = refused.value.detail
            assert detail["error"] == "limit_storage_unavailable"
            assert str(redis_server.port) not in repr(refused.value.detail)
    finally:
        await limit.aclose()


@pytest.mark.parametrize("fail_open", [False, True])
async def test_concurrency_cap_when_redis_is_killed(
    redis_server: RedisServer, fail_open: bool
) -> None:
    cap = ConcurrencyLimit(
        1, storage_uri=redis_server.url, scope=uuid.uuid4().hex, fail_open=fail_open
    )
    try:
        release = await cap.acquire("alice")
        await release()
        kill_redis(redis_server)
        if fail_open:
            uncounted = await cap.acquire("alice")
            second = await cap.acquire("alice")  # nothing is counted while Redis is away
            await uncounted()
            await second()
        else:
            with pytest.raises(HTTPException) as refused:
                await cap.acquire("alice")
            assert refused.value.status_code == 503
    finally:
        await cap.aclose()


@pytest.mark.parametrize("fail_open", [False, True])
async def test_router_option_with_redis_killed(redis_server: RedisServer, fail_open: bool) -> None:
    app = FastAPI()
    router = create_router(
        slow_job,
        path="/job",
        rate_limit="100/minute",
        max_concurrent_runs=2,
        rate_limit_storage=redis_server.url,
        rate_limit_scope=uuid.uuid4().hex,
        rate_limit_fail_open=fail_open,
    )
    app.include_router(router)
    with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            before = await http.post("/job", json={"parameters": {"steps": 1}})
            assert before.status_code == 200
            kill_redis(redis_server)
            after = await http.post("/job", json={"parameters": {"steps": 1}})
    if fail_open:
        assert after.status_code == 200
        assert after.json()["status"] == "completed"
        assert "x-ratelimit-remaining" not in after.headers
    else:
        assert after.status_code == 503
        assert after.json()["detail"]["error"] == "limit_storage_unavailable"
        assert str(redis_server.port) not in after.text


# --- IETF headers ----------------------------------------------------------------------------


async def test_ietf_headers_beside_the_x_headers() -> None:
    limit = RateLimit("2/minute;10/hour")
    first = await limit.hit(fake_request())
    assert first["RateLimit-Policy"] == '"2 per 1 minute";q=2;w=60, "10 per 1 hour";q=10;w=3600'
    assert re.fullmatch(r'"2 per 1 minute";r=1;t=(\d+)', first["RateLimit"])
    assert int(first["RateLimit"].rsplit("=", 1)[1]) <= 60
    assert first["X-RateLimit-Remaining"] == "1"
    await limit.hit(fake_request())
    with pytest.raises(HTTPException) as refused:
        await limit.hit(fake_request())
    headers = refused.value.headers or {}
    assert refused.value.status_code == 429
    assert re.fullmatch(r'"2 per 1 minute";r=0;t=\d+', headers["RateLimit"])
    assert headers["RateLimit-Policy"] == first["RateLimit-Policy"]


async def test_ietf_headers_can_be_turned_off() -> None:
    headers = await RateLimit("2/minute", ietf_headers=False).hit(fake_request())
    assert set(headers) == {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}
