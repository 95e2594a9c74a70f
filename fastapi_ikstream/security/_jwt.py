"""`JWTBearer`: the dependency that verifies a JWT bearer token (RFC 6750 answers)."""

import logging
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from fastapi import HTTPException, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase

from .._exceptions import MissingExtraError
from ._claims import (
    HMAC,
    TokenRejected,
    check_algorithms,
    header_problem,
    scopes_of,
    time_claims_problem,
)
from ._jose import JOSE_MISSING, ClaimChecks, decode, keys_from, unverified_header
from ._jwks import JWKSCache
from ._principal import Principal

__all__ = ["JWTBearer"]

logger = logging.getLogger("fastapi_ikstream")


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

    def __init__(  # noqa: PLR0913 - public constructor: keyword-only options
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
        if JOSE_MISSING is not None:
            raise MissingExtraError("jwt", "JWTBearer") from JOSE_MISSING
        self.algorithms = check_algorithms(algorithms)
        if sum(source is not None for source in (secret, public_key, jwks_url)) != 1:
            raise ValueError("give exactly one of secret, public_key or jwks_url")
        hmac_family = self.algorithms <= HMAC
        if secret is not None and not hmac_family:
            raise ValueError("a secret verifies HS256/HS384/HS512 tokens only")
        if secret is None and hmac_family:
            raise ValueError("HS* algorithms need a secret, not a public key or JWKS")
        if secret is not None and len(secret.encode()) < 32:
            raise ValueError("an HMAC secret must be at least 32 bytes (RFC 7518 section 3.2)")
        if max_token_bytes < 1:
            raise ValueError("max_token_bytes must be positive")
        material = secret if secret is not None else public_key
        self._static_keys = {} if material is None else keys_from(material, self.algorithms)
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.required_scopes = frozenset(scopes)
        self.query_param = query_param
        self.cookie_name = cookie_name
        self.max_token_bytes = max_token_bytes
        self.realm = realm
        self._jwks = JWKSCache(jwks_url, jwks_timeout, jwks_cache_seconds, jwks_min_refresh_seconds)
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
                raise TokenRejected("The bearer token is empty.")
            if (
                len(token) > self.max_token_bytes
                or len(token.encode("utf-8", "replace")) > self.max_token_bytes
            ):
                raise TokenRejected("The token is too large.")
            claims = await self._verify(token)
        except TokenRejected as exc:
            self._refuse(401, str(exc), "invalid_token")
        principal = Principal(
            subject=claims["sub"],
            scopes=scopes_of(claims),
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
            header = unverified_header(token)
            alg = header.get("alg")
            if not isinstance(alg, str) or alg not in self.algorithms:
                raise TokenRejected("The token's signing algorithm is not accepted.")
            kid = header.get("kid")
            if kid is not None and not isinstance(kid, str):
                raise TokenRejected("The token's key id (kid) is invalid.")
            if (problem := header_problem(header)) is not None:
                raise TokenRejected(problem)
            if self._static_keys:
                keys: list[Any] = [self._static_keys[alg]]
            else:
                keys = await self._jwks.keys_for(kid, alg)
            checks = ClaimChecks(self.audience, self.issuer, self.leeway)
            claims = decode(token, keys, alg, checks)
        except (TokenRejected, HTTPException):
            raise
        except Exception:  # any other failure of a hostile token is a 401, never a 500
            logger.debug("JWT refused by an unexpected error", exc_info=True)
            raise TokenRejected("The token is invalid.") from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise TokenRejected("The token has no subject (sub).")
        problem = time_claims_problem(claims, leeway=self.leeway, now=time.time())
        if problem is not None:
            raise TokenRejected(problem)
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
