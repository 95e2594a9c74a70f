"""Rate limits and concurrent-run limits, in memory and in a real redis-server."""

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import pytest
import redis
from conftest import free_port
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response, Security

from fastapi_ikstream.ratelimit import ConcurrencyLimit, RateLimit, client_address
from fastapi_ikstream.security import APIKeyAuth, Principal

pytestmark = pytest.mark.timeout(30)

KEYS = {"alice-key-0123456789": "alice", "bob-key-0123456789": "bob"}


def make_router(limit: RateLimit, auth: APIKeyAuth | None = None) -> APIRouter:
    """A router whose ``/x`` is limited by ``limit`` (per principal when ``auth`` is given).

    No parameter is named ``request``, and every router made here has an endpoint of the
    same name: neither matters, unlike with slowapi (issue 173).
    """
    if auth is None:

        async def check(req: Request, resp: Response) -> None:
            resp.headers.update(await limit.hit(req, None))

    else:

        async def check(  # type: ignore[misc]  # another signature on purpose: FastAPI reads it
            req: Request, resp: Response, who: Annotated[Principal, Security(auth)]
        ) -> None:
            resp.headers.update(await limit.hit(req, who))

    router = APIRouter(dependencies=[Depends(check)])

    @router.get("/x")
    async def x() -> dict[str, bool]:
        return {"ok": True}

    return router


def make_app(limit: RateLimit, auth: APIKeyAuth | None = None) -> FastAPI:
    app = FastAPI()
    app.include_router(make_router(limit, auth))
    return app


def client(app: FastAPI, peer: str = "10.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(peer, 1234))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def statuses(http: httpx.AsyncClient, n: int, path: str = "/x", **kwargs: Any) -> list[int]:
    return [(await http.get(path, **kwargs)).status_code for _ in range(n)]


# --- request budgets ----------------------------------------------------------------------


async def test_eleventh_request_in_a_minute_gets_429_with_headers() -> None:
    limit = RateLimit("10/minute")
    async with client(make_app(limit)) as http:
        allowed = [await http.get("/x") for _ in range(10)]
        refused = await http.get("/x")

    assert [r.status_code for r in allowed] == [200] * 10
    assert [r.headers["x-ratelimit-remaining"] for r in allowed] == [
        str(n) for n in range(9, -1, -1)
    ]
    assert {r.headers["x-ratelimit-limit"] for r in allowed} == {"10"}
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/json"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit"] == "10"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    reset = int(refused.headers["x-ratelimit-reset"])
    assert time.time() < reset <= time.time() + 61
    detail = refused.json()["detail"]
    assert detail["error"] == "rate_limited"
    assert detail["limit"] == "10 per 1 minute"
    assert detail["retry_after"] == int(refused.headers["retry-after"])
    assert detail["message"].startswith("Rate limit exceeded (10 per 1 minute). Retry in ")


async def test_principals_have_separate_budgets() -> None:
    limit = RateLimit("2/minute")
    async with client(make_app(limit, APIKeyAuth(KEYS))) as http:
        alice = await statuses(http, 3, headers={"X-API-Key": "alice-key-0123456789"})
        bob = await statuses(http, 3, headers={"X-API-Key": "bob-key-0123456789"})
    assert alice == [200, 200, 429]
    assert bob == [200, 200, 429]


async def test_two_limits_never_share_a_budget_even_under_a_prefix() -> None:
    # Two routers from one factory (slowapi issue 173), included under prefixes (slowapi
    # issue 281): each keeps its own count, and both are enforced.
    app = FastAPI()
    app.include_router(make_router(RateLimit("2/minute")), prefix="/a")
    nested = APIRouter(prefix="/b")
    nested.include_router(make_router(RateLimit("2/minute")), prefix="/v2")
    app.include_router(nested, prefix="/api")
    async with client(app) as http:
        on_first = await statuses(http, 3, "/a/x")
        on_second = await statuses(http, 3, "/api/b/v2/x")
    assert on_first == [200, 200, 429]
    assert on_second == [200, 200, 429]


async def test_every_limit_of_a_list_is_enforced() -> None:
    minute_trips = RateLimit("3/minute;200/day")
    day_trips = RateLimit("5/minute;2/day")
    async with client(make_app(minute_trips)) as http:
        first = [await http.get("/x") for _ in range(4)]
    async with client(make_app(day_trips)) as http:
        second = [await http.get("/x") for _ in range(3)]

    assert [r.status_code for r in first] == [200, 200, 200, 429]
    assert first[3].json()["detail"]["limit"] == "3 per 1 minute"
    assert [r.status_code for r in second] == [200, 200, 429]
    assert second[2].json()["detail"]["limit"] == "2 per 1 day"
    assert 3500 < int(second[2].headers["retry-after"]) <= 86400
    # Success headers describe the limit closest to running out.
    assert second[0].headers["x-ratelimit-limit"] == "2"
    assert second[0].headers["x-ratelimit-remaining"] == "1"


async def test_forwarded_for_is_ignored_unless_trusted() -> None:
    untrusted = RateLimit("2/minute")
    trusted = RateLimit("2/minute", trust_forwarded_for=True)
    results = {}
    for name, limit in (("untrusted", untrusted), ("trusted", trusted)):
        async with client(make_app(limit)) as http:
            results[name] = [
                (
                    await http.get("/x", headers={"X-Forwarded-For": f"203.0.113.{i}, 10.0.0.9"})
                ).status_code
                for i in range(3)
            ]
    assert results == {"untrusted": [200, 200, 429], "trusted": [200, 200, 200]}


def test_client_address() -> None:
    def request(peer: tuple[str, int] | None, forwarded: str | None) -> Request:
        headers = [] if forwarded is None else [(b"x-forwarded-for", forwarded.encode())]
        return Request({"type": "http", "headers": headers, "client": peer})

    peer = ("10.0.0.1", 5000)
    assert client_address(request(peer, "203.0.113.7")) == "10.0.0.1"
    assert client_address(request(peer, "203.0.113.7, 10.0.0.2"), trust_forwarded_for=True) == (
        "203.0.113.7"
    )
    assert client_address(request(peer, " 2001:db8::1 "), trust_forwarded_for=True) == "2001:db8::1"
    assert client_address(request(peer, "not-an-ip"), trust_forwarded_for=True) == "10.0.0.1"
    assert client_address(request(None, None)) == "unknown"


@pytest.mark.parametrize("strategy", ["fixed-window", "sliding-window-counter"])
async def test_other_strategies(strategy: Any) -> None:
    limit = RateLimit("2/minute", strategy=strategy)
    async with client(make_app(limit)) as http:
        assert await statuses(http, 3) == [200, 200, 429]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("ten per fortnight",), {}, "cannot parse"),
        (("",), {}, "cannot parse"),
        (("1/minute",), {"strategy": "token-bucket"}, "unknown strategy"),
        (("1/minute",), {"storage_uri": "nowhere://x", "scope": "s"}, "unusable"),
        (("1/minute",), {"storage_uri": "redis://127.0.0.1:1"}, "explicit scope"),
        (("1/minute",), {"scope": ""}, "empty"),
    ],
)
def test_rate_limit_configuration_is_checked(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        RateLimit(*args, **kwargs)


# --- concurrent runs ---------------------------------------------------------------------


async def _concurrency_rules(make: Any) -> None:
    """Shared by the memory and Redis tests: two limits built by ``make`` count together."""
    first, second = make(), make()
    try:
        release_1 = await first.acquire("alice")
        release_2 = await second.acquire("alice")
        with pytest.raises(HTTPException) as refused:
            await first.acquire("alice")
        assert refused.value.status_code == 429
        detail: object = refused.value.detail
        assert detail == {
            "error": "too_many_runs",
            "message": "At most 2 runs at once: wait for one to finish.",
            "max_concurrent_runs": 2,
        }
        release_bob = await second.acquire("bob")  # other keys are independent

        await release_1()
        await release_1()  # idempotent: frees one slot only
        release_3 = await second.acquire("alice")
        with pytest.raises(HTTPException):
            await first.acquire("alice")
        for release in (release_2, release_3, release_bob):
            await release()
        await asyncio.gather(*[(await first.acquire("alice"))() for _ in range(2)])
    finally:
        await first.aclose()
        await second.aclose()


async def test_concurrency_limit_in_memory() -> None:
    limit = ConcurrencyLimit(2)
    await _concurrency_rules(lambda: limit)  # one process: the same instance twice


async def test_concurrency_limits_are_separate_per_instance() -> None:
    first, second = ConcurrencyLimit(1), ConcurrencyLimit(1)
    await first.acquire("alice")
    await second.acquire("alice")  # a second limit has its own slots
    with pytest.raises(HTTPException):
        await first.acquire("alice")


async def test_a_slot_is_freed_when_its_lease_ends() -> None:
    limit = ConcurrencyLimit(1, lease_seconds=0.05)
    await limit.acquire("alice")  # never released, as by a crashed run
    with pytest.raises(HTTPException):
        await limit.acquire("alice")
    await asyncio.sleep(0.06)
    release = await limit.acquire("alice")
    await release()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_concurrent_runs": 0}, "at least 1"),
        ({"max_concurrent_runs": 1, "lease_seconds": 0}, "positive"),
        ({"max_concurrent_runs": 1, "storage_uri": "nowhere://x"}, "unknown storage"),
        ({"max_concurrent_runs": 1, "storage_uri": "redis://127.0.0.1:1"}, "explicit scope"),
    ],
)
def test_concurrency_configuration_is_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConcurrencyLimit(**kwargs)


# --- Redis: what several workers share --------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen(
        [
            *("/usr/bin/redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=port, socket_connect_timeout=0.2) as probe:
                    if probe.ping():
                        break
            except redis.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)


def unique(name: str) -> str:
    return f"{name}-{time.monotonic_ns()}"


@pytest.mark.redis
async def test_redis_rate_limit_is_shared_by_workers_with_the_same_scope(redis_url: str) -> None:
    scope = unique("image-api")
    worker_1 = RateLimit("10/minute", storage_uri=redis_url, scope=scope)
    worker_2 = RateLimit("10/minute", storage_uri=redis_url, scope=scope)
    elsewhere = RateLimit("10/minute", storage_uri=redis_url, scope=unique("other"))
    try:
        async with client(make_app(worker_1)) as one, client(make_app(worker_2)) as two:
            shared = [await (one if i % 2 else two).get("/x") for i in range(11)]
        async with client(make_app(elsewhere)) as three:
            separate = await statuses(three, 1)
    finally:
        for limit in (worker_1, worker_2, elsewhere):
            await limit.aclose()
    assert [r.status_code for r in shared] == [200] * 10 + [429]
    assert shared[-1].headers["x-ratelimit-limit"] == "10"
    assert 1 <= int(shared[-1].headers["retry-after"]) <= 60
    assert separate == [200]


@pytest.mark.redis
async def test_redis_rate_limit_keeps_principals_apart(redis_url: str) -> None:
    limit = RateLimit("2/minute", storage_uri=redis_url, scope=unique("per-principal"))
    try:
        async with client(make_app(limit, APIKeyAuth(KEYS))) as http:
            alice = await statuses(http, 3, headers={"X-API-Key": "alice-key-0123456789"})
            bob = await statuses(http, 1, headers={"X-API-Key": "bob-key-0123456789"})
    finally:
        await limit.aclose()
    assert (alice, bob) == ([200, 200, 429], [200])


@pytest.mark.redis
async def test_redis_concurrency_limit_is_shared_by_workers(redis_url: str) -> None:
    scope = unique("runs")
    await _concurrency_rules(lambda: ConcurrencyLimit(2, storage_uri=redis_url, scope=scope))


@pytest.mark.redis
async def test_redis_lease_frees_the_slot_of_a_crashed_worker(redis_url: str) -> None:
    scope = unique("lease")
    crashed = ConcurrencyLimit(1, storage_uri=redis_url, scope=scope, lease_seconds=0.1)
    survivor = ConcurrencyLimit(1, storage_uri=redis_url, scope=scope, lease_seconds=0.1)
    try:
        await crashed.acquire("alice")  # never released
        with pytest.raises(HTTPException):
            await survivor.acquire("alice")
        await asyncio.sleep(0.12)
        await (await survivor.acquire("alice"))()
    finally:
        await crashed.aclose()
        await survivor.aclose()


@pytest.mark.redis
async def test_redis_release_completes_when_the_caller_is_cancelled(redis_url: str) -> None:
    limit = ConcurrencyLimit(1, storage_uri=redis_url, scope=unique("cancel"))
    try:
        release = await limit.acquire("alice")
        task = asyncio.ensure_future(release())
        await asyncio.sleep(0)  # the release has started talking to Redis
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(2):
            while True:  # the shielded release finishes on its own
                try:
                    await (await limit.acquire("alice"))()
                    break
                except HTTPException:
                    await asyncio.sleep(0.005)
    finally:
        await limit.aclose()


@pytest.mark.redis
async def test_unreachable_redis_gives_503_not_500() -> None:
    with socket.socket() as sock:  # a port that refuses connections
        sock.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
        limit = RateLimit("1/minute", storage_uri=url, scope="down")
        runs = ConcurrencyLimit(1, storage_uri=url, scope="down")
        try:
            async with client(make_app(limit)) as http:
                response = await http.get("/x")
            with pytest.raises(HTTPException) as refused:
                await runs.acquire("alice")
        finally:
            await limit.aclose()
            await runs.aclose()
    assert response.status_code == 503
    assert response.json()["detail"]["error"] == "limit_storage_unavailable"
    assert refused.value.status_code == 503


# --- without the extras ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "code", "extra"),
    [
        ("limits", "import fastapi_ikstream.ratelimit", "ratelimit"),
        (
            "redis",
            "from fastapi_ikstream.ratelimit import RateLimit\n"
            "RateLimit('1/minute')\n"
            "RateLimit('1/minute', storage_uri='redis://127.0.0.1:1', scope='s')",
            "redis",
        ),
    ],
)
def test_a_missing_extra_names_the_install_command(missing: str, code: str, extra: str) -> None:
    script = f"import sys\nsys.modules[{missing!r}] = None\n{code}\n"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20, check=False
    )
    assert result.returncode == 1
    assert f'pip install "fastapi-ikstream[{extra}]"' in result.stderr
    assert "ImportError" in result.stderr or "MissingExtraError" in result.stderr
