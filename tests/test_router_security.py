"""Auth, rate limits and concurrent-run caps declared on create_router."""

from __future__ import annotations

import asyncio
from typing import Annotated

import httpx
from fastapi import Depends, FastAPI

from fastapi_ikstream import create_router
from fastapi_ikstream.security import JWTBearer, Principal, create_access_token
from fastapi_ikstream.testing import FakeDeployment

SECRET = "s" * 40


def token(subject: str, scope: str = "images:generate") -> str:
    return create_access_token(
        {"sub": subject, "scope": scope, "aud": "image-api"}, secret_or_key=SECRET
    )


def bearer(subject: str, scope: str = "images:generate") -> dict[str, str]:
    return {"authorization": f"Bearer {token(subject, scope)}"}


AUTH = JWTBearer(
    secret=SECRET, algorithms=["HS256"], audience="image-api", scopes=["images:generate"]
)

QUICK = FakeDeployment([{"state": "STARTED"}, {"results": [{"DATA_DICT": {}}]}])


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_auth_runs_before_the_first_byte_and_principal_is_usable():
    app = FastAPI()
    app.include_router(create_router(QUICK, path="/gen", auth=AUTH), prefix="/api")

    @app.get("/me")
    async def me(principal: Annotated[Principal, Depends(AUTH)]):
        return {"subject": principal.subject}

    async with client_for(app) as client:
        response = await client.post("/api/gen/stream", json={})
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/json"
        assert response.headers["www-authenticate"].startswith("Bearer")
        response = await client.post(
            "/api/gen/stream", json={}, headers={"authorization": "Bearer garbage"}
        )
        assert response.status_code == 401
        assert "garbage" not in response.text
        response = await client.post("/api/gen/stream", json={}, headers=bearer("bob", "other"))
        assert response.status_code == 403
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
        response = await client.post("/api/gen/stream", json={}, headers=bearer("alice"))
        assert response.status_code == 200
        assert "event: done" in response.text
        response = await client.get("/me", headers=bearer("alice"))
        assert response.json() == {"subject": "alice"}
    schema = app.openapi()
    assert schema["components"]["securitySchemes"]["JWTBearer"]["scheme"] == "bearer"
    assert schema["paths"]["/api/gen/stream"]["post"]["security"]


async def test_eleventh_request_is_429_and_budgets_are_separate():
    app = FastAPI()
    app.include_router(
        create_router(QUICK, path="/a", auth=AUTH, rate_limit="10/minute"), prefix="/api/v1"
    )
    app.include_router(
        create_router(QUICK, path="/b", auth=AUTH, rate_limit="10/minute"), prefix="/api/v1"
    )
    async with client_for(app) as client:
        for _ in range(10):
            response = await client.post("/api/v1/a", json={}, headers=bearer("alice"))
            assert response.status_code == 200
            assert "x-ratelimit-remaining" in response.headers
        response = await client.post("/api/v1/a/stream", json={}, headers=bearer("alice"))
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["x-ratelimit-remaining"] == "0"
        assert response.json()["detail"]
        # another principal has its own budget, and so has the other router
        response = await client.post("/api/v1/a/stream", json={}, headers=bearer("bob"))
        assert response.status_code == 200
        response = await client.post("/api/v1/b/stream", json={}, headers=bearer("alice"))
        assert response.status_code == 200


async def test_third_concurrent_run_is_refused_until_one_ends(serve_app):
    slow = FakeDeployment(
        [{"progress": {"current": i, "total": 50}} for i in range(50)], delay=0.05
    )
    app = FastAPI()
    router = create_router(slow, path="/gen", auth=AUTH, max_concurrent_runs=2)
    app.include_router(router, prefix="/api")
    with serve_app(app) as server:
        url = server.url + "/api/gen/runs"
        async with httpx.AsyncClient(timeout=10) as client:
            first = await client.post(url, json={}, headers=bearer("alice"))
            second = await client.post(url, json={}, headers=bearer("alice"))
            assert first.status_code == second.status_code == 201
            third = await client.post(url, json={}, headers=bearer("alice"))
            assert third.status_code == 429
            assert "2" in str(third.json()["detail"])
            assert int(third.headers["Retry-After"]) > 0
            other = await client.post(url, json={}, headers=bearer("bob"))
            assert other.status_code == 201
            cancel = await client.delete(
                server.url + first.json()["cancel_url"], headers=bearer("alice")
            )
            assert cancel.status_code == 202
            for _ in range(100):
                again = await client.post(url, json={}, headers=bearer("alice"))
                if again.status_code == 201:
                    break
                await asyncio.sleep(0.02)
            assert again.status_code == 201
