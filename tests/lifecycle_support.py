"""Shared parts of the lifecycle tests: a deployment with every ending, and release checks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

import httpx
from pydantic import BaseModel

from fastapi_ikstream import DeploymentError
from fastapi_ikstream.security import JWTBearer, create_access_token

SECRET = "lifecycle-" + "s" * 40
SCOPE = "runs:start"


def jwt_auth() -> JWTBearer:
    return JWTBearer(secret=SECRET, algorithms=["HS256"], audience="lifecycle", scopes=[SCOPE])


def bearer(subject: str, scope: str = SCOPE) -> dict[str, str]:
    token = create_access_token(
        {"sub": subject, "scope": scope, "aud": "lifecycle"}, secret_or_key=SECRET
    )
    return {"authorization": f"Bearer {token}"}


def jwt_key(subject: str) -> str:
    """The quota key of a JWT subject (no issuer)."""
    return f"sub:jwt:|{subject}"


class Job(BaseModel):
    """What a run does: ``mode`` picks how it ends."""

    mode: Literal["quick", "slow", "fail", "fail_first", "open_error"] = "quick"
    steps: int = 3
    delay: float = 0.0


class Modes:
    """A deployment whose runs end in every way a run can end."""

    def open_run(self, inputs: Any, parameters: Mapping[str, Any]) -> Any:
        job: Job = inputs
        if job.mode == "open_error":
            raise DeploymentError("the deployment cannot be reached", code="unreachable")
        return self._run(job)

    async def _run(self, job: Job) -> AsyncIterator[dict[str, Any]]:
        if job.mode == "fail_first":
            raise DeploymentError("refused at once", code="refused")
        steps = 100_000 if job.mode == "slow" else job.steps
        delay = job.delay or (0.05 if job.mode == "slow" else 0.0)
        for index in range(steps):
            if delay:
                await asyncio.sleep(delay)
            yield {"state": "STARTED", "progress": {"current": index + 1, "total": steps}}
            if job.mode == "fail" and index == 1:
                raise DeploymentError("it broke", code="broke")
        yield {"results": [{"DATA_DICT": {"steps": steps}}]}


async def eventually(check: Any, timeout: float = 5.0, what: str = "") -> None:
    """Poll ``check()`` (sync) until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not released within {timeout} s: {what}")
        await asyncio.sleep(0.02)


async def wait_finished(
    client: httpx.AsyncClient, state_url: str, headers: Mapping[str, str], timeout: float = 5.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(state_url, headers=dict(headers))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["finished"]:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"run not finished within {timeout} s: {body}")
        await asyncio.sleep(0.02)
