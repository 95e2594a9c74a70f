"""Hostile JWTs signed with the right key: claims python-jose alone lets through.

Each token is minted inside the test (never at import time), signed with the verifier's
own secret, so only the claim checks stand between it and a 200.
"""

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, Security

from fastapi_ikstream.security import JWTBearer, Principal

pytestmark = pytest.mark.timeout(30)

SECRET = "h" * 48
AUD = "hostile-suite"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """An HS256 JWS over exactly these claims (python's json writes NaN and Infinity)."""
    head = {"alg": "HS256", "typ": "JWT", **(header or {})}
    signing_input = f"{_b64(json.dumps(head).encode())}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "aud": AUD, "iat": now, "exp": now + 300, **extra}


Row = Callable[[int], str]

# id -> a function of the current time giving the token
REFUSED: dict[str, Row] = {
    "iat an hour ahead": lambda now: sign(claims(iat=now + 3600)),
    "iat a minute ahead": lambda now: sign(claims(iat=now + 60)),
    "exp a numeric string": lambda now: sign(claims(exp=str(now + 300))),
    "exp a string of digits far ahead": lambda now: sign(claims(exp="99999999999")),
    "exp 1e308": lambda now: sign(claims(exp=1e308)),
    "exp beyond year 9999": lambda now: sign(claims(exp=253_402_300_800)),
    "exp 2**63": lambda now: sign(claims(exp=2**63)),
    "exp Infinity": lambda now: sign(claims(exp=float("inf"))),
    "exp NaN": lambda now: sign(claims(exp=float("nan"))),
    "exp true": lambda now: sign(claims(exp=True)),
    "exp a list": lambda now: sign(claims(exp=[now + 300])),
    "exp null": lambda now: sign(claims(exp=None)),
    "nbf a string": lambda now: sign(claims(nbf=str(now))),
    "nbf negative": lambda now: sign(claims(nbf=-1)),
    "iat a string": lambda now: sign(claims(iat=str(now))),
    "iat 1e308": lambda now: sign(claims(iat=1e308)),
    "crit unknown": lambda now: sign(claims(), {"crit": ["exp-ext"], "exp-ext": 1}),
    "crit empty list": lambda now: sign(claims(), {"crit": []}),
    "crit not a list": lambda now: sign(claims(), {"crit": "b64"}),
    "crit b64 (RFC 7797)": lambda now: sign(claims(), {"crit": ["b64"], "b64": False}),
}

ACCEPTED: dict[str, Row] = {
    "plain": lambda now: sign(claims()),
    "no iat": lambda now: sign({k: v for k, v in claims().items() if k != "iat"}),
    "fractional dates": lambda now: sign(claims(iat=now - 0.5, exp=now + 300.25)),
    "iat within the leeway": lambda now: sign(claims(iat=now + 20)),
}


def app_for(auth: JWTBearer) -> FastAPI:
    app = FastAPI()

    @app.get("/me")
    async def me(principal: Annotated[Principal, Security(auth)]) -> dict[str, str]:
        return {"subject": principal.subject}

    return app


async def get_me(auth: JWTBearer, token: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app_for(auth))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        return await http.get("/me", headers={"Authorization": f"Bearer {token}"})


@pytest.mark.parametrize("make", REFUSED.values(), ids=REFUSED.keys())
async def test_hostile_claims_are_refused(make: Row) -> None:
    auth = JWTBearer(secret=SECRET, algorithms=["HS256"], audience=AUD, leeway=30)
    token = make(int(time.time()))
    response = await get_me(auth, token)
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert token not in response.text


@pytest.mark.parametrize("make", ACCEPTED.values(), ids=ACCEPTED.keys())
async def test_sound_claims_are_accepted(make: Row) -> None:
    auth = JWTBearer(secret=SECRET, algorithms=["HS256"], audience=AUD, leeway=30)
    response = await get_me(auth, make(int(time.time())))
    assert response.status_code == 200, response.text
    assert response.json() == {"subject": "alice"}


async def test_leeway_applies_to_iat_as_documented() -> None:
    now = int(time.time())
    token = sign(claims(iat=now + 20))
    strict = JWTBearer(secret=SECRET, algorithms=["HS256"], audience=AUD)
    lenient = JWTBearer(secret=SECRET, algorithms=["HS256"], audience=AUD, leeway=60)
    assert (await get_me(strict, token)).status_code == 401
    assert (await get_me(lenient, token)).status_code == 200
