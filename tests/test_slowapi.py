"""``rate_limit=(limiter, "…")``: a router counted in an app's own slowapi ``Limiter``."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI, Request
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded

from fastapi_ikstream import create_router
from fastapi_ikstream.ratelimit import SlowAPILimit
from fastapi_ikstream.testing import FakeDeployment

BODY: dict[str, object] = {"inputs": []}


def by_team(request: Request) -> str:
    return request.headers.get("x-team", "none")


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def make_app(limiter: Limiter, *, slowapi_handler: bool) -> FastAPI:
    app = FastAPI()
    app.state.limiter = limiter
    if slowapi_handler:
        app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    deployment = FakeDeployment([{"state": "STARTED"}])
    app.include_router(create_router(deployment, path="/g", rate_limit=(limiter, "2/minute")))
    return app


async def test_the_limiters_key_function_and_storage_count_the_runs() -> None:
    limiter = Limiter(key_func=by_team)
    async with client(make_app(limiter, slowapi_handler=False)) as http:
        red = [await http.post("/g", json=BODY, headers={"x-team": "red"}) for _ in range(3)]
        blue = await http.post("/g", json=BODY, headers={"x-team": "blue"})
        assert [r.status_code for r in red] == [200, 200, 429]
        assert blue.status_code == 200  # another key of the limiter's key function
        assert red[0].headers["X-RateLimit-Limit"] == "2"
        assert red[2].json()["detail"]["error"] == "rate_limited"
        assert int(red[2].headers["Retry-After"]) > 0
        limiter.reset()  # the limiter's own storage holds the router's counts
        again = await http.post("/g", json=BODY, headers={"x-team": "red"})
        assert again.status_code == 200


async def test_slowapis_handler_gives_the_apps_own_429_form() -> None:
    limiter = Limiter(key_func=by_team, headers_enabled=True)
    async with client(make_app(limiter, slowapi_handler=True)) as http:
        answers = [await http.post("/g", json=BODY) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[2].json() == {"error": "Rate limit exceeded: 2 per 1 minute"}
        assert "Retry-After" in answers[2].headers


async def test_a_rejected_body_costs_no_budget() -> None:
    limiter = Limiter(key_func=by_team)
    async with client(make_app(limiter, slowapi_handler=False)) as http:
        bad = [await http.post("/g", json={"inputs": "x", "nope": 1}) for _ in range(5)]
        assert {a.status_code for a in bad} == {422}
        good = [await http.post("/g", json=BODY) for _ in range(2)]
        assert [a.status_code for a in good] == [200, 200]


def test_a_bare_limiter_needs_its_limits_and_the_key_function_adapter_reads_it() -> None:
    limiter = Limiter(key_func=by_team)
    with pytest.raises(ValueError, match="give the limits"):
        create_router(FakeDeployment([]), rate_limit=limiter)
    assert SlowAPILimit(limiter, "1/second").key_func is by_team
    with pytest.raises(ValueError, match="cannot parse"):
        SlowAPILimit(limiter, "often")
