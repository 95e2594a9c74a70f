"""JWT bearer and API-key auth: hostile tokens, JWKS fetching, token sources, OpenAPI."""

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import random
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import pytest

# `serve` is the function behind the `serve_app` fixture; imported so one JWKS server
# can be shared by the whole module (the fixture itself is function-scoped).
from conftest import free_port, serve
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from fastapi import FastAPI, Security
from jose import jwk

from fastapi_ikstream.security import APIKeyAuth, JWTBearer, Principal, create_access_token

pytestmark = pytest.mark.timeout(30)

SECRET = "k" * 48
AUD = "image-api"
ISS = "https://issuer.test/"


@dataclass(frozen=True)
class KeyPair:
    private_pem: str
    public_pem: str

    def jwk(self, kid: str, alg: str) -> dict[str, Any]:
        return {**jwk.construct(self.public_pem, alg).to_dict(), "kid": kid, "use": "sig"}


def _pair(private_key: Any) -> KeyPair:
    return KeyPair(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
    )


RSA_KEY = _pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))
OTHER_RSA_KEY = _pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))
EC_KEY = _pair(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def rsa_key() -> KeyPair:
    return RSA_KEY


@pytest.fixture
def other_rsa_key() -> KeyPair:
    return OTHER_RSA_KEY


@pytest.fixture
def ec_key() -> KeyPair:
    return EC_KEY


def _jwks_app(issuer_state: dict[str, Any]) -> FastAPI:
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.get("/.well-known/jwks.json")
    async def jwks() -> JSONResponse:
        issuer_state["fetches"] += 1
        return JSONResponse(issuer_state["body"], status_code=issuer_state["status"])

    return app


@pytest.fixture(scope="module")
def module_jwks() -> Iterator[str]:
    state = {"fetches": 0, "status": 200, "body": {"keys": [RSA_KEY.jwk("k1", "RS256")]}}
    with serve(_jwks_app(state)) as server:
        yield f"{server.url}/.well-known/jwks.json"


def make_app(auth: JWTBearer | APIKeyAuth) -> FastAPI:
    app = FastAPI()

    @app.get("/me")
    async def me(principal: Annotated[Principal, Security(auth)]) -> dict[str, Any]:
        return {"subject": principal.subject, "scopes": sorted(principal.scopes)}

    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], claims: Any, sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def good_claims(**extra: Any) -> dict[str, Any]:
    # An hour: the hostile-input table is signed at collection, long before its tests run.
    now = int(time.time())
    return {
        "sub": "alice",
        "aud": AUD,
        "iss": ISS,
        "iat": now,
        "exp": now + 3600,
        "scope": "images:generate",
        **extra,
    }


@functools.cache
def rsa_signer(key: KeyPair) -> Callable[[bytes], bytes]:
    private = serialization.load_pem_private_key(
        key.private_pem.encode(), password=None, unsafe_skip_rsa_key_validation=True
    )
    assert isinstance(private, rsa.RSAPrivateKey)
    return lambda data: private.sign(data, padding.PKCS1v15(), hashes.SHA256())


def rs256(key: KeyPair, claims: dict[str, Any], kid: str = "k1") -> str:
    """An RS256 token; signed here because loading the PEM per token (as jose does) is slow."""
    now = int(time.time())
    claims = {"iat": now, "exp": now + 3600, **claims}
    return raw_token({"alg": "RS256", "typ": "JWT", "kid": kid}, claims, rsa_signer(key))


# --- the hostile-input table ------------------------------------------------------------


def _tampered(rsa_key: KeyPair) -> str:
    """A valid token whose payload was swapped for another after signing."""
    valid = create_access_token(
        good_claims(), secret_or_key=rsa_key.private_pem, algorithm="RS256", headers={"kid": "k1"}
    )
    head, _, sig = valid.split(".")
    return f"{head}.{b64(json.dumps(good_claims(sub='admin')).encode())}.{sig}"


Header = Callable[[], str | None]


def _hostile_rows(rsa_key: KeyPair, other: KeyPair) -> dict[str, tuple[Header, int]]:
    """Row id -> (a function making the Authorization header value or None, expected status).

    The headers are made when a test runs, never at import: a token minted at collection
    would expire (``exp`` is 300 s ahead) before a slow run reaches its test.
    """
    sign = rsa_signer(rsa_key)

    def now() -> int:
        return int(time.time())

    return {
        "no header": (lambda: None, 401),
        "empty bearer": (lambda: "Bearer ", 401),
        "garbage": (lambda: "Bearer not-a-jwt", 401),
        "garbage three parts": (lambda: "Bearer aaa.bbb.ccc", 401),
        "wrong signature": (lambda: f"Bearer {rs256(other, good_claims())}", 401),
        "tampered payload": (lambda: f"Bearer {_tampered(rsa_key)}", 401),
        "expired": (lambda: f"Bearer {rs256(rsa_key, good_claims(exp=now() - 60))}", 401),
        "nbf in the future": (
            lambda: f"Bearer {rs256(rsa_key, good_claims(nbf=now() + 3600))}",
            401,
        ),
        "wrong aud": (lambda: f"Bearer {rs256(rsa_key, good_claims(aud='other-api'))}", 401),
        "no aud": (
            lambda: (
                f"Bearer {rs256(rsa_key, {k: v for k, v in good_claims().items() if k != 'aud'})}"
            ),
            401,
        ),
        "wrong iss": (
            lambda: f"Bearer {rs256(rsa_key, good_claims(iss='https://evil.test/'))}",
            401,
        ),
        "no exp": (
            lambda: f"Bearer {raw_token({'alg': 'RS256', 'kid': 'k1'}, {'sub': 'x'}, sign)}",
            401,
        ),
        "alg none": (
            lambda: (
                f"Bearer {raw_token({'alg': 'none', 'typ': 'JWT'}, good_claims(), lambda _: b'')}"
            ),
            401,
        ),
        "alg None spelled oddly": (
            lambda: f"Bearer {raw_token({'alg': 'nOnE', 'kid': 'k1'}, good_claims(), sign)}",
            401,
        ),
        "HS256 signed with the RSA public key": (
            lambda: (
                "Bearer "
                + raw_token(
                    {"alg": "HS256", "typ": "JWT", "kid": "k1"},
                    good_claims(),
                    lambda data: hmac.new(
                        rsa_key.public_pem.encode(), data, hashlib.sha256
                    ).digest(),
                )
            ),
            401,
        ),
        "unknown kid": (lambda: f"Bearer {rs256(other, good_claims(), kid='unknown')}", 401),
        "kid not a string": (
            lambda: f"Bearer {raw_token({'alg': 'RS256', 'kid': 7}, good_claims(), sign)}",
            401,
        ),
        "header not an object": (
            lambda: f"Bearer {b64(b'[1]')}.{b64(json.dumps(good_claims()).encode())}.{b64(b'x')}",
            401,
        ),
        "oversized token": (lambda: f"Bearer {rs256(rsa_key, good_claims(pad='x' * 9000))}", 401),
        "claims not an object": (
            lambda: f"Bearer {raw_token({'alg': 'RS256', 'kid': 'k1'}, [1, 2], sign)}",
            401,
        ),
        "sub not a string": (lambda: f"Bearer {rs256(rsa_key, good_claims(sub=42))}", 401),
        "aud list of numbers": (lambda: f"Bearer {rs256(rsa_key, good_claims(aud=[1, 2]))}", 401),
        "no sub": (
            lambda: (
                f"Bearer {rs256(rsa_key, {k: v for k, v in good_claims().items() if k != 'sub'})}"
            ),
            401,
        ),
        "exp not a number": (lambda: f"Bearer {rs256(rsa_key, good_claims(exp='tomorrow'))}", 401),
        "wrong scheme (Basic)": (lambda: "Basic YWxpY2U6c2VjcmV0", 401),
        "missing scope": (
            lambda: f"Bearer {rs256(rsa_key, good_claims(scope='images:read'))}",
            403,
        ),
    }


HOSTILE = _hostile_rows(RSA_KEY, OTHER_RSA_KEY)


@pytest.mark.parametrize("mode", ["jwks", "pem"])
@pytest.mark.parametrize(("make_header", "expected"), HOSTILE.values(), ids=HOSTILE.keys())
async def test_hostile_input_is_refused_with_json(
    make_header: Header, expected: int, mode: str, rsa_key: KeyPair, module_jwks: str
) -> None:
    authorization = make_header()
    if mode == "jwks":
        auth = JWTBearer(
            jwks_url=module_jwks,
            algorithms=["RS256"],
            audience=AUD,
            issuer=ISS,
            scopes=["images:generate"],
        )
    else:
        auth = JWTBearer(
            public_key=rsa_key.public_pem,
            algorithms=["RS256"],
            audience=AUD,
            issuer=ISS,
            scopes=["images:generate"],
        )
    headers = {} if authorization is None else {"Authorization": authorization}
    async with client(make_app(auth)) as http:
        response = await http.get("/me", headers=headers)

    assert response.status_code == expected
    assert response.headers["content-type"] == "application/json"
    assert isinstance(response.json()["detail"], str)
    challenge = response.headers["www-authenticate"]
    if authorization is None or not authorization.startswith("Bearer"):
        assert challenge == "Bearer"  # RFC 6750 §3.1: no error code without a token
    elif expected == 403:
        assert challenge.startswith('Bearer error="insufficient_scope"')
        assert 'scope="images:generate"' in challenge
    else:
        assert challenge.startswith('Bearer error="invalid_token"')
    credential = (authorization or "").partition(" ")[2].strip()
    if credential:
        everything = response.text + json.dumps(dict(response.headers))
        assert credential not in everything
        assert credential[-20:] not in everything


async def test_valid_tokens_from_every_key_source(
    rsa_key: KeyPair, ec_key: KeyPair, module_jwks: str
) -> None:
    cases = [
        (
            JWTBearer(jwks_url=module_jwks, algorithms=["RS256"], audience=AUD, issuer=ISS),
            rs256(rsa_key, good_claims()),
        ),
        (
            JWTBearer(public_key=ec_key.public_pem, algorithms=["ES256"], audience=AUD),
            create_access_token(
                good_claims(scope=None, scp=["b", "a", 3]),
                secret_or_key=ec_key.private_pem,
                algorithm="ES256",
            ),
        ),
        (
            JWTBearer(secret=SECRET, algorithms=["HS256", "HS512"], audience=AUD),
            create_access_token(good_claims(), secret_or_key=SECRET, algorithm="HS512"),
        ),
    ]
    seen = []
    for auth, token in cases:
        async with client(make_app(auth)) as http:
            response = await http.get("/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        seen.append(response.json())
    assert seen == [
        {"subject": "alice", "scopes": ["images:generate"]},
        {"subject": "alice", "scopes": ["a", "b"]},
        {"subject": "alice", "scopes": ["images:generate"]},
    ]


async def test_hs256_token_made_with_the_public_key_is_refused_by_an_hmac_verifier(
    rsa_key: KeyPair,
) -> None:
    # The other half of algorithm confusion: an HMAC verifier whose secret is someone's PEM.
    with pytest.raises(ValueError, match="HS256"):
        JWTBearer(secret=rsa_key.public_pem, algorithms=["HS256"])


async def test_leeway_accepts_a_token_just_expired() -> None:
    token = create_access_token({"sub": "alice"}, secret_or_key=SECRET, expires_in=-5)
    strict = JWTBearer(secret=SECRET, algorithms=["HS256"])
    lenient = JWTBearer(secret=SECRET, algorithms=["HS256"], leeway=30)
    statuses = []
    for auth in (strict, lenient):
        async with client(make_app(auth)) as http:
            response = await http.get("/me", headers={"Authorization": f"Bearer {token}"})
            statuses.append(response.status_code)
    assert statuses == [401, 200]


def _segments(token: str) -> list[bytes | None]:
    """Each part of a token as jose's base64url decoding reads it (None: undecodable)."""
    parts: list[bytes | None] = []
    for part in token.split("."):
        try:
            parts.append(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        except ValueError:
            parts.append(None)
    return parts


async def test_mutated_tokens_never_give_500(rsa_key: KeyPair) -> None:
    valid = rs256(rsa_key, good_claims())
    rng = random.Random(4)
    alphabet = string.ascii_letters + string.digits + "-_.=+/ !%~é"
    mutants: set[str] = set()
    while len(mutants) < 300:
        chars = list(valid)
        kind = rng.randrange(4)
        at = rng.randrange(len(chars))
        if kind == 0:
            chars[at] = rng.choice(alphabet)
        elif kind == 1:
            del chars[at : at + rng.randrange(1, 40)]
        elif kind == 2:
            chars.insert(at, rng.choice(alphabet))
        else:
            chars = list(".".join(rng.sample(valid.split("."), 3)))
        mutants.add("".join(chars))
    auth = JWTBearer(public_key=rsa_key.public_pem, algorithms=["RS256"], audience=AUD, issuer=ISS)
    accepted = []
    async with client(make_app(auth)) as http:
        for mutant in mutants:
            sent = f"Bearer {mutant}".encode("latin-1")
            response = await http.get("/me", headers={b"Authorization": sent})
            assert response.status_code in (200, 401), mutant
            assert "detail" in response.json() or response.status_code == 200
            if response.status_code == 200:
                accepted.append(mutant)
    # Only mutants that decode to the very same bytes (base64 slack bits) may pass.
    assert all(_segments(m) == _segments(valid) for m in accepted)
    assert len(accepted) < len(mutants) // 10


# --- JWKS: cache, refresh on an unknown kid, failures ------------------------------------


async def test_jwks_is_cached_and_refreshed_on_an_unknown_kid(
    serve_app: Callable[..., Any], rsa_key: KeyPair, other_rsa_key: KeyPair
) -> None:
    state: dict[str, Any] = {
        "fetches": 0,
        "status": 200,
        "body": {"keys": [rsa_key.jwk("k1", "RS256")]},
    }
    with serve_app(_jwks_app(state)) as server:
        auth = JWTBearer(
            jwks_url=f"{server.url}/.well-known/jwks.json",
            algorithms=["RS256"],
            jwks_min_refresh_seconds=0,
        )
        old = rs256(rsa_key, {"sub": "alice"})
        new = rs256(other_rsa_key, {"sub": "bob"}, kid="k2")
        async with client(make_app(auth)) as http:

            async def call(token: str) -> int:
                response = await http.get("/me", headers={"Authorization": f"Bearer {token}"})
                return response.status_code

            # 20 concurrent first requests share one fetch.
            assert await asyncio.gather(*(call(old) for _ in range(20))) == [200] * 20
            assert state["fetches"] == 1
            assert await call(old) == 200
            assert state["fetches"] == 1  # cached

            assert await call(new) == 401  # k2 not published yet: fetched again, still unknown
            assert state["fetches"] == 2
            state["body"] = {"keys": [rsa_key.jwk("k1", "RS256"), other_rsa_key.jwk("k2", "RS256")]}
            assert await call(new) == 200  # key rotation: the unknown kid triggers a refresh
            assert state["fetches"] == 3
            assert await call(new) == 200
            assert await call(old) == 200
            assert state["fetches"] == 3


async def test_unknown_kids_cannot_flood_the_issuer(
    serve_app: Callable[..., Any], rsa_key: KeyPair, other_rsa_key: KeyPair
) -> None:
    state: dict[str, Any] = {
        "fetches": 0,
        "status": 200,
        "body": {"keys": [rsa_key.jwk("k1", "RS256")]},
    }
    with serve_app(_jwks_app(state)) as server:
        auth = JWTBearer(jwks_url=f"{server.url}/.well-known/jwks.json", algorithms=["RS256"])
        async with client(make_app(auth)) as http:
            statuses = []
            for i in range(10):
                token = rs256(other_rsa_key, {"sub": "x"}, kid=f"made-up-{i}")
                response = await http.get("/me", headers={"Authorization": f"Bearer {token}"})
                statuses.append(response.status_code)
    assert statuses == [401] * 10
    assert state["fetches"] == 1  # at most one fetch per jwks_min_refresh_seconds (10 s)


async def test_unreachable_jwks_gives_503_json(rsa_key: KeyPair) -> None:
    auth = JWTBearer(
        jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json", algorithms=["RS256"], jwks_timeout=2
    )
    async with client(make_app(auth)) as http:
        response = await http.get(
            "/me", headers={"Authorization": f"Bearer {rs256(rsa_key, {'sub': 'alice'})}"}
        )
    assert response.status_code == 503
    assert "signing keys cannot be fetched" in response.json()["detail"]
    assert response.headers["retry-after"] == "10"


async def test_broken_jwks_gives_503_json(serve_app: Callable[..., Any], rsa_key: KeyPair) -> None:
    state: dict[str, Any] = {"fetches": 0}
    broken = {
        "server error": (500, {"keys": []}),
        "no keys member": (200, {"no": "keys"}),
        "not an object": (200, [1, 2]),
        "keys not a list": (200, {"keys": "nope"}),
    }
    token = rs256(rsa_key, {"sub": "alice"})
    with serve_app(_jwks_app(state)) as server:
        for status, body in broken.values():
            state |= {"status": status, "body": body}
            auth = JWTBearer(jwks_url=f"{server.url}/.well-known/jwks.json", algorithms=["RS256"])
            async with client(make_app(auth)) as http:
                response = await http.get("/me", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 503, body
            assert response.json()["detail"].startswith("The token issuer's signing keys")
    assert state["fetches"] == len(broken)


async def test_stale_keys_are_kept_while_the_issuer_is_down(
    serve_app: Callable[..., Any], rsa_key: KeyPair
) -> None:
    state: dict[str, Any] = {
        "fetches": 0,
        "status": 200,
        "body": {"keys": [rsa_key.jwk("k1", "RS256")]},
    }
    with serve_app(_jwks_app(state)) as server:
        auth = JWTBearer(
            jwks_url=f"{server.url}/.well-known/jwks.json",
            algorithms=["RS256"],
            jwks_cache_seconds=0,
            jwks_min_refresh_seconds=0,
        )
        token = rs256(rsa_key, {"sub": "alice"})
        async with client(make_app(auth)) as http:
            first = await http.get("/me", headers={"Authorization": f"Bearer {token}"})
            state["status"] = 500
            second = await http.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert (first.status_code, second.status_code) == (200, 200)
    assert state["fetches"] == 2  # the stale set was refetched, failed, and still used


# --- token sources ----------------------------------------------------------------------


async def test_query_param_and_cookie_only_when_enabled() -> None:
    token = create_access_token({"sub": "alice"}, secret_or_key=SECRET)
    default = JWTBearer(secret=SECRET, algorithms=["HS256"])
    opted_in = JWTBearer(
        secret=SECRET, algorithms=["HS256"], query_param="access_token", cookie_name="session"
    )
    results = {}
    for name, auth in (("default", default), ("opted_in", opted_in)):
        async with client(make_app(auth)) as http:
            by_query = await http.get("/me", params={"access_token": token})
            http.cookies.set("session", token)
            by_cookie = await http.get("/me")
        results[name] = (by_query.status_code, by_cookie.status_code)
    assert results == {"default": (401, 401), "opted_in": (200, 200)}


async def test_header_wins_over_other_sources_and_a_bad_query_token_is_refused() -> None:
    good = create_access_token({"sub": "alice"}, secret_or_key=SECRET)
    auth = JWTBearer(secret=SECRET, algorithms=["HS256"], query_param="access_token")
    async with client(make_app(auth)) as http:
        by_header = await http.get(
            "/me", params={"access_token": "junk"}, headers={"Authorization": f"Bearer {good}"}
        )
        bad_query = await http.get("/me", params={"access_token": "ünï.cødé.✓"})
    assert by_header.status_code == 200
    assert bad_query.status_code == 401
    assert bad_query.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


# --- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"secret": SECRET, "algorithms": ["none"]}, "none"),
        ({"secret": SECRET, "algorithms": ["HS256", "NONE"]}, "none"),
        ({"secret": SECRET, "algorithms": []}, "required"),
        ({"secret": SECRET, "algorithms": "HS256"}, "list"),
        ({"secret": SECRET, "algorithms": ["HS256", "RS256"]}, "mix"),
        ({"secret": SECRET, "algorithms": ["XS999"]}, "unsupported"),
        ({"algorithms": ["HS256"]}, "exactly one"),
        ({"secret": SECRET, "jwks_url": "http://x", "algorithms": ["HS256"]}, "exactly one"),
        ({"secret": "short", "algorithms": ["HS256"]}, "32 bytes"),
        ({"secret": SECRET, "algorithms": ["RS256"]}, "HS256/HS384/HS512"),
        ({"jwks_url": "http://x", "algorithms": ["HS256"]}, "need a secret"),
        ({"public_key": "not a pem", "algorithms": ["RS256"]}, "cannot verify"),
        ({"secret": SECRET, "algorithms": ["HS256"], "max_token_bytes": 0}, "max_token_bytes"),
    ],
)
def test_unsafe_configuration_is_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JWTBearer(**kwargs)


def test_openapi_lists_both_schemes() -> None:
    app = FastAPI()
    jwt_auth = JWTBearer(secret=SECRET, algorithms=["HS256"], description="Issuer tokens")
    key_auth = APIKeyAuth({"k" * 20: "partner"}, header_name="X-Partner-Key")

    @app.get("/jwt")
    async def by_jwt(principal: Annotated[Principal, Security(jwt_auth)]) -> str:
        return principal.subject

    @app.get("/key")
    async def by_key(principal: Annotated[Principal, Security(key_auth)]) -> str:
        return principal.subject

    spec = app.openapi()
    assert spec["components"]["securitySchemes"] == {
        "JWTBearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "Issuer tokens",
        },
        "APIKeyAuth": {"type": "apiKey", "in": "header", "name": "X-Partner-Key"},
    }
    assert spec["paths"]["/jwt"]["get"]["security"] == [{"JWTBearer": []}]
    assert spec["paths"]["/key"]["get"]["security"] == [{"APIKeyAuth": []}]


# --- API keys ---------------------------------------------------------------------------


async def test_api_keys_map_to_principals() -> None:
    auth = APIKeyAuth(
        {
            "alpha-key-0123456789": "alpha",
            "beta-key-0123456789": Principal(subject="beta", scopes=frozenset({"images:read"})),
        }
    )
    async with client(make_app(auth)) as http:
        alpha = await http.get("/me", headers={"X-API-Key": "alpha-key-0123456789"})
        beta = await http.get("/me", headers={"X-API-Key": "beta-key-0123456789"})
        missing = await http.get("/me")
        wrong = await http.get("/me", headers={"X-API-Key": "alpha-key-012345678"})
        empty = await http.get("/me", headers={"X-API-Key": ""})
    assert alpha.json() == {"subject": "alpha", "scopes": []}
    assert beta.json() == {"subject": "beta", "scopes": ["images:read"]}
    for refused in (missing, wrong, empty):
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "APIKey"
        assert isinstance(refused.json()["detail"], str)
    assert "alpha-key" not in wrong.text


@pytest.mark.parametrize("keys", [{}, {"": "nobody"}])
def test_api_key_configuration_is_checked(keys: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="at least one key"):
        APIKeyAuth(keys)


# --- without the jwt extra -------------------------------------------------------------


def test_without_python_jose_only_jwt_needs_the_extra() -> None:
    code = """
import asyncio, sys
sys.modules["jose"] = None  # as if python-jose were not installed
from fastapi_ikstream.security import APIKeyAuth, JWTBearer
APIKeyAuth({"key-0123456789": "alice"})
try:
    JWTBearer(secret="k" * 48, algorithms=["HS256"])
except ImportError as exc:
    print(exc)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=True
    )
    assert 'pip install "fastapi-ikstream[jwt]"' in result.stdout
