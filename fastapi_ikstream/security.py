"""Authentication dependencies: JWT bearer tokens and API keys, answered as RFC 6750 says.

Both are callable classes, like `fastapi.security.HTTPBearer`: configure them once, use the
instance as a dependency, and read the caller as a `Principal`::

    from typing import Annotated
    from fastapi import Security
    from fastapi_ikstream.security import JWTBearer, Principal

    auth = JWTBearer(jwks_url="https://issuer/.well-known/jwks.json", algorithms=["RS256"],
                     audience="image-api", issuer="https://issuer/", scopes=["images:generate"])

    @app.get("/me")
    async def me(principal: Annotated[Principal, Security(auth)]) -> dict[str, str]:
        return {"subject": principal.subject}

A refused caller gets a JSON body (``{"detail": "..."}``) and a real status: 401 with
``WWW-Authenticate: Bearer`` (plus ``error="invalid_token"`` when a token was sent), 403 with
``error="insufficient_scope"``, 503 when the issuer's key set cannot be fetched. Messages are
fixed sentences: they never echo the token or the JWT library's own text. No input gives a 500.

JWTs are verified with python-jose (the ``jwt`` extra); every call to it is in the private
``_jose_*`` functions below, so another JWT library could take its place. `APIKeyAuth` and
`Principal` do not need the extra.
"""

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, NoReturn

import httpx
from fastapi import HTTPException, Request
from fastapi.openapi.models import APIKey as APIKeyModel
from fastapi.openapi.models import APIKeyIn
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from pydantic import BaseModel, ConfigDict, Field

from ._exceptions import MissingExtraError
from ._jwt_claims import header_problem, time_claims_problem

try:
    from jose import jwk, jwt
    from jose.exceptions import ExpiredSignatureError, JWTClaimsError

    _JOSE_MISSING: ImportError | None = None
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess by the tests
    _JOSE_MISSING = _exc

__all__ = ["APIKeyAuth", "JWTBearer", "Principal", "create_access_token"]

logger = logging.getLogger("fastapi_ikstream")

_HMAC = frozenset({"HS256", "HS384", "HS512"})
_RSA = frozenset({"RS256", "RS384", "RS512"})
_EC = frozenset({"ES256", "ES384", "ES512"})
_KTY = {**dict.fromkeys(_RSA, "RSA"), **dict.fromkeys(_EC, "EC")}


class Principal(BaseModel):
    """The authenticated caller, as an auth dependency returns it.

    It keys rate limits and concurrent-run limits (``subject``) and owns the runs it starts.

    Attributes:
        subject: stable identifier of the caller: the JWT ``sub`` claim, or the name given to
            an API key.
        scopes: the scopes granted (JWT ``scope``/``scp``); empty for API keys unless given.
        claims: every verified claim of the JWT; empty for API keys unless given.
        authority: who vouched for the subject: ``"jwt:{iss}"`` (``"jwt:"`` without an
            issuer) for a JWT, ``"apikey"`` for an API key. Runs belong to the authority
            and the subject together, so an API key named ``alice`` cannot read the runs
            of a JWT subject ``alice``.
    """

    model_config = ConfigDict(frozen=True)

    subject: str = Field(min_length=1)
    scopes: frozenset[str] = frozenset()
    claims: dict[str, Any] = Field(default_factory=dict)
    authority: str | None = None


class _TokenRejected(Exception):
    """A token failed a check; the message is one of this module's fixed sentences."""


def _challenge(realm: str | None, **params: str) -> str:
    """Build a ``WWW-Authenticate: Bearer`` value (RFC 6750 §3)."""
    fields = ([("realm", realm)] if realm else []) + list(params.items())
    if not fields:
        return "Bearer"
    return "Bearer " + ", ".join(f'{name}="{value}"' for name, value in fields)


class JWTBearer(SecurityBase):
    """Dependency that verifies a JWT bearer token and returns its `Principal`.

    Exactly one key source is given: ``secret`` (HMAC), ``public_key`` (PEM) or
    ``jwks_url``. The token must be signed with one of ``algorithms``, carry an ``exp``
    and a ``sub``, and hold every scope of ``scopes``. ``exp``, ``nbf`` and ``iat`` must be
    JSON numbers (RFC 7519 NumericDate) between 0 and the year 9999, ``iat`` not in the
    future, and the header must not list ``crit`` parameters (none is supported).

    The token is read from ``Authorization: Bearer <token>``. A browser ``EventSource``
    cannot set headers, so two opt-in sources exist for it, each with a cost:

    * ``query_param``: the token lands in URLs, hence in access logs, proxy logs, browser
      history and ``Referer`` headers. Use short-lived tokens issued for this purpose only.
    * ``cookie_name``: the browser sends the cookie on every request to the site, including
      ones triggered by other sites; set it ``HttpOnly``, ``Secure`` and ``SameSite=Strict``
      (or ``Lax``), and do not use it on routes that change state without a CSRF defence.

    Args:
        algorithms: accepted ``alg`` values, all from one family: HMAC (``HS256``,
            ``HS384``, ``HS512``) for ``secret``, or RSA/EC (``RS*``, ``ES*``) for
            ``public_key`` and ``jwks_url``. ``none`` is always refused.
        secret: HMAC secret, at least 32 bytes (RFC 7518 §3.2). Default None.
        public_key: PEM-encoded public key. Default None.
        jwks_url: URL of the issuer's JSON Web Key Set, fetched with httpx when first
            needed, kept for ``jwks_cache_seconds`` and fetched again when a token names an
            unknown ``kid``. Default None.
        audience: required ``aud`` value; None accepts only tokens without ``aud``.
        issuer: required ``iss`` value; None skips the check. Default None.
        leeway: seconds of clock skew allowed: a token is accepted up to ``leeway`` seconds
            after its ``exp``, and up to ``leeway`` seconds before its ``nbf`` or ``iat``.
            Default 0.
        scopes: scopes the token must hold, from ``scope`` (space-separated) or ``scp``
            (list or space-separated); a missing one gives 403. Default none.
        query_param: name of a query parameter the token may come in; None disables it.
        cookie_name: name of a cookie the token may come in; None disables it.
        max_token_bytes: longer tokens are refused before any parsing. Default 8192.
        jwks_timeout: seconds allowed for one fetch of the key set. Default 5.0.
        jwks_cache_seconds: seconds a fetched key set is used before it is fetched again.
            Default 300.0.
        jwks_min_refresh_seconds: least time between two fetches, so a flood of tokens
            with made-up ``kid`` values cannot flood the issuer. Default 10.0.
        realm: ``realm`` sent in ``WWW-Authenticate``; None sends none.
        scheme_name: name of the scheme in OpenAPI. Default ``"JWTBearer"``.
        description: description of the scheme in OpenAPI.

    Raises:
        ValueError: on a configuration that is unsafe or cannot work: no key source or
            several, an empty, unknown, ``none`` or mixed-family ``algorithms``, a short
            secret, an unreadable public key, a non-positive ``max_token_bytes``.
        MissingExtraError: python-jose is not installed (``pip install
            "fastapi-ikstream[jwt]"``); also an `ImportError`.

    Example:
        ```python
        auth = JWTBearer(secret=os.environ["JWT_SECRET"], algorithms=["HS256"],
                         audience="image-api", scopes=["images:generate"])
        ```
    """

    def __init__(
        self,
        *,
        algorithms: Sequence[str],
        secret: str | None = None,
        public_key: str | None = None,
        jwks_url: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0,
        scopes: Sequence[str] = (),
        query_param: str | None = None,
        cookie_name: str | None = None,
        max_token_bytes: int = 8192,
        jwks_timeout: float = 5.0,
        jwks_cache_seconds: float = 300.0,
        jwks_min_refresh_seconds: float = 10.0,
        realm: str | None = None,
        scheme_name: str | None = None,
        description: str | None = None,
    ) -> None:
        if _JOSE_MISSING is not None:
            raise MissingExtraError("jwt", "JWTBearer") from _JOSE_MISSING
        self.algorithms = _check_algorithms(algorithms)
        if sum(source is not None for source in (secret, public_key, jwks_url)) != 1:
            raise ValueError("give exactly one of secret, public_key or jwks_url")
        hmac_family = self.algorithms <= _HMAC
        if secret is not None and not hmac_family:
            raise ValueError("a secret verifies HS256/HS384/HS512 tokens only")
        if secret is None and hmac_family:
            raise ValueError("HS* algorithms need a secret, not a public key or JWKS")
        if secret is not None and len(secret.encode()) < 32:
            raise ValueError("an HMAC secret must be at least 32 bytes (RFC 7518 section 3.2)")
        if max_token_bytes < 1:
            raise ValueError("max_token_bytes must be positive")
        material = secret if secret is not None else public_key
        self._static_keys = {} if material is None else _jose_keys(material, self.algorithms)
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.required_scopes = frozenset(scopes)
        self.query_param = query_param
        self.cookie_name = cookie_name
        self.max_token_bytes = max_token_bytes
        self.realm = realm
        self._jwks = _JWKSCache(
            jwks_url, jwks_timeout, jwks_cache_seconds, jwks_min_refresh_seconds
        )
        self.model = HTTPBearerModel(bearerFormat="JWT", description=description)
        self.scheme_name = scheme_name or type(self).__name__

    async def __call__(self, request: Request) -> Principal:
        """Verify the request's token.

        Returns:
            the caller, with the token's ``sub``, scopes and claims.

        Raises:
            HTTPException: 401 (no token, or an invalid one), 403 (a required scope is
                missing), 503 (the key set cannot be fetched).
        """
        token = self._token(request)
        if token is None:
            self._refuse(401, "Not authenticated: send a bearer token.", None)
        try:
            if not token:
                raise _TokenRejected("The bearer token is empty.")
            if (
                len(token) > self.max_token_bytes
                or len(token.encode("utf-8", "replace")) > self.max_token_bytes
            ):
                raise _TokenRejected("The token is too large.")
            claims = await self._verify(token)
        except _TokenRejected as exc:
            self._refuse(401, str(exc), "invalid_token")
        principal = Principal(
            subject=claims["sub"],
            scopes=_scopes_of(claims),
            claims=dict(claims),
            authority=f"jwt:{claims.get('iss') or ''}",
        )
        missing = self.required_scopes - principal.scopes
        if missing:
            self._refuse(
                403, "The token lacks a required scope.", "insufficient_scope", sorted(missing)
            )
        return principal

    def _token(self, request: Request) -> str | None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()  # an empty value is an invalid token, not a missing one
        if self.query_param is not None and (found := request.query_params.get(self.query_param)):
            return found
        if self.cookie_name is not None and (found := request.cookies.get(self.cookie_name)):
            return found
        return None

    async def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = _jose_header(token)
            alg = header.get("alg")
            if not isinstance(alg, str) or alg not in self.algorithms:
                raise _TokenRejected("The token's signing algorithm is not accepted.")
            kid = header.get("kid")
            if kid is not None and not isinstance(kid, str):
                raise _TokenRejected("The token's key id (kid) is invalid.")
            if (problem := header_problem(header)) is not None:
                raise _TokenRejected(problem)
            if self._static_keys:
                keys: list[Any] = [self._static_keys[alg]]
            else:
                keys = await self._jwks.keys_for(kid, alg)
            claims = _jose_decode(token, keys, alg, self)
        except (_TokenRejected, HTTPException):
            raise
        except Exception:  # any other failure of a hostile token is a 401, never a 500
            logger.debug("JWT refused by an unexpected error", exc_info=True)
            raise _TokenRejected("The token is invalid.") from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise _TokenRejected("The token has no subject (sub).")
        problem = time_claims_problem(claims, leeway=self.leeway, now=time.time())
        if problem is not None:
            raise _TokenRejected(problem)
        return claims

    def _refuse(
        self, status: int, message: str, error: str | None, scopes: list[str] | None = None
    ) -> NoReturn:
        params = {} if error is None else {"error": error, "error_description": message}
        if scopes:
            params["scope"] = " ".join(scopes)
        raise HTTPException(
            status, detail=message, headers={"WWW-Authenticate": _challenge(self.realm, **params)}
        )


def _check_algorithms(algorithms: Sequence[str]) -> frozenset[str]:
    if isinstance(algorithms, str):
        raise ValueError("algorithms is a list, e.g. ['RS256']")
    chosen = frozenset(algorithms)
    if not chosen:
        raise ValueError("algorithms is required, e.g. ['RS256']")
    if any(alg.lower() == "none" for alg in chosen):
        raise ValueError("the 'none' algorithm is never accepted")
    unknown = chosen - _HMAC - _RSA - _EC
    if unknown:
        raise ValueError(f"unsupported algorithms: {sorted(unknown)}")
    if chosen & _HMAC and chosen - _HMAC:
        raise ValueError("algorithms may not mix HMAC (HS*) with RSA/EC (RS*, ES*)")
    return chosen


def _scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(item for item in value if isinstance(item, str))
    return frozenset(found)


class _JWKSCache:
    """The issuer's signing keys, fetched with httpx and kept by ``kid``."""

    def __init__(
        self,
        url: str | None,
        timeout: float,
        cache_seconds: float,
        min_refresh_seconds: float,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.min_refresh_seconds = min_refresh_seconds
        self.keys: list[dict[str, Any]] = []
        self.fetched_at: float | None = None  # monotonic time of the last good fetch
        self.tried_at: float | None = None  # monotonic time of the last attempt
        self._pending: asyncio.Future[None] | None = None  # one fetch, awaited by all

    def _match(self, kid: str | None, alg: str) -> list[dict[str, Any]]:
        return [
            key
            for key in self.keys
            if key.get("kty") == _KTY[alg]
            and key.get("alg", alg) == alg
            and (kid is None or key.get("kid") == kid)
        ]

    async def keys_for(self, kid: str | None, alg: str) -> list[dict[str, Any]]:
        now = time.monotonic()
        found = self._match(kid, alg)
        fresh = self.fetched_at is not None and now - self.fetched_at < self.cache_seconds
        if found and fresh:
            return found
        may_fetch = self.tried_at is None or now - self.tried_at >= self.min_refresh_seconds
        if may_fetch or self._pending is not None:
            await self._refresh()
            found = self._match(kid, alg)
        if found:
            return found
        if self.fetched_at is None or self.tried_at != self.fetched_at:
            raise HTTPException(
                503,
                detail="The token issuer's signing keys cannot be fetched; try again later.",
                headers={"Retry-After": str(max(1, round(self.min_refresh_seconds)))},
            )
        raise _TokenRejected("The token's signing key is not known.")

    async def _refresh(self) -> None:
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._fetch())
            self._pending.add_done_callback(self._clear_pending)
        await asyncio.shield(self._pending)

    def _clear_pending(self, task: asyncio.Future[None]) -> None:
        self._pending = None
        if not task.cancelled():
            task.exception()  # failures are logged in _fetch; mark them retrieved

    async def _fetch(self) -> None:
        assert self.url is not None
        self.tried_at = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.get(self.url, headers={"Accept": "application/json"})
            response.raise_for_status()
            document = response.json()
            keys = document["keys"] if isinstance(document, dict) else None
            if not isinstance(keys, list):
                raise ValueError("the JWKS document has no 'keys' list")
        except Exception as exc:
            logger.warning("cannot fetch the JWKS at %s: %r", self.url, exc)
            return
        self.keys = [
            key
            for key in keys
            if isinstance(key, dict) and key.get("use", "sig") == "sig" and key.get("kty")
        ]
        self.fetched_at = self.tried_at


# --- python-jose, and nothing else, below this line ------------------------------------


def _jose_keys(material: str, algorithms: Iterable[str]) -> dict[str, Any]:
    """Build one verification key per accepted algorithm from a secret or PEM key."""
    keys: dict[str, Any] = {}
    for alg in algorithms:
        try:
            keys[alg] = jwk.construct(material, alg)
        except Exception as exc:
            raise ValueError(f"the key cannot verify {alg} tokens: {exc}") from None
    return keys


def _jose_header(token: str) -> dict[str, Any]:
    header = jwt.get_unverified_header(token)
    if not isinstance(header, dict):
        raise _TokenRejected("The token is invalid.")
    return header


def _jose_decode(token: str, keys: Iterable[Any], alg: str, bearer: JWTBearer) -> dict[str, Any]:
    options = {
        "require_exp": True,
        "require_aud": bearer.audience is not None,
        "require_iss": bearer.issuer is not None,
        "leeway": timedelta(seconds=bearer.leeway),
    }
    try:
        return jwt.decode(
            token,
            list(keys),
            algorithms=[alg],
            options=options,
            audience=bearer.audience,
            issuer=bearer.issuer,
        )
    except ExpiredSignatureError:
        raise _TokenRejected("The token has expired.") from None
    except JWTClaimsError:
        raise _TokenRejected("The token's claims are not valid here.") from None


def create_access_token(
    claims: Mapping[str, Any],
    *,
    secret_or_key: str,
    algorithm: str = "HS256",
    expires_in: float = 900.0,
    headers: Mapping[str, Any] | None = None,
) -> str:
    """Sign a JWT, for tests, demos and small issuers.

    Args:
        claims: claims to sign, e.g. ``{"sub": "alice", "scope": "images:generate"}``;
            ``iat`` and ``exp`` are added unless present.
        secret_or_key: HMAC secret, or PEM private key for ``RS*``/``ES*``.
        algorithm: signing algorithm. Default ``"HS256"``.
        expires_in: seconds from now until ``exp``. Default 900.0.
        headers: extra JOSE header fields, e.g. ``{"kid": "key-1"}``. Default none.

    Returns:
        the compact JWS string.

    Raises:
        MissingExtraError: python-jose is not installed (``pip install
            "fastapi-ikstream[jwt]"``); also an `ImportError`.
    """
    if _JOSE_MISSING is not None:
        raise MissingExtraError("jwt", "create_access_token") from _JOSE_MISSING
    now = int(time.time())
    payload = {"iat": now, "exp": now + int(expires_in), **claims}
    return jwt.encode(payload, secret_or_key, algorithm=algorithm, headers=headers)


class APIKeyAuth(SecurityBase):
    """Dependency that checks an API key header and returns the key's `Principal`.

    Keys are compared in constant time: the SHA-256 of the sent key is compared with
    `hmac.compare_digest` to the hash of every configured key, without stopping at a match.

    Args:
        keys: maps each accepted key to its `Principal`, or to a subject name (a
            `Principal` with that subject and no scopes).
        header_name: header that carries the key. Default ``"X-API-Key"``.
        scheme_name: name of the scheme in OpenAPI. Default ``"APIKeyAuth"``.
        description: description of the scheme in OpenAPI.

    Raises:
        ValueError: no keys, or an empty key.

    Example:
        ```python
        auth = APIKeyAuth({os.environ["PARTNER_KEY"]: "partner"})
        ```
    """

    def __init__(
        self,
        keys: Mapping[str, Principal | str],
        *,
        header_name: str = "X-API-Key",
        scheme_name: str | None = None,
        description: str | None = None,
    ) -> None:
        if not keys or not all(keys):
            raise ValueError("APIKeyAuth needs at least one key, and no empty key")
        self.header_name = header_name
        self._entries = [
            (
                hashlib.sha256(key.encode()).digest(),
                (
                    who.model_copy(update={"authority": who.authority or "apikey"})
                    if isinstance(who, Principal)
                    else Principal(subject=who, authority="apikey")
                ),
            )
            for key, who in keys.items()
        ]
        self.model = APIKeyModel(
            **{"in": APIKeyIn.header},
            name=header_name,
            description=description,
        )
        self.scheme_name = scheme_name or type(self).__name__

    async def __call__(self, request: Request) -> Principal:
        """Check the request's API key.

        Returns:
            the key's principal.

        Raises:
            HTTPException: 401 when the key is missing or not accepted.
        """
        sent = request.headers.get(self.header_name)
        if not sent:
            _refuse_key(f"Not authenticated: send an API key in the {self.header_name} header.")
        digest = hashlib.sha256(sent.encode("latin-1", "replace")).digest()
        found: Principal | None = None
        for known, principal in self._entries:
            if hmac.compare_digest(known, digest):
                found = principal
        if found is None:
            _refuse_key("The API key is not valid.")
        return found


def _refuse_key(message: str) -> NoReturn:
    raise HTTPException(401, detail=message, headers={"WWW-Authenticate": "APIKey"})
