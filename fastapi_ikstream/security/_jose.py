"""python-jose, and nothing else: every call to the JWT library is in this module.

Another JWT library could take its place here without the rest of the package changing.
"""

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .._exceptions import MissingExtraError
from ._claims import TokenRejected

try:
    from jose import jwk, jwt
    from jose.exceptions import ExpiredSignatureError, JWTClaimsError

    JOSE_MISSING: ImportError | None = None
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess by the tests
    JOSE_MISSING = _exc

__all__ = [
    "JOSE_MISSING",
    "ClaimChecks",
    "create_access_token",
    "decode",
    "keys_from",
    "unverified_header",
]


def keys_from(material: str, algorithms: Iterable[str]) -> dict[str, Any]:
    """Build one verification key per accepted algorithm from a secret or PEM key."""
    keys: dict[str, Any] = {}
    for alg in algorithms:
        try:
            keys[alg] = jwk.construct(material, alg)
        except Exception as exc:
            raise ValueError(f"the key cannot verify {alg} tokens: {exc}") from None
    return keys


def unverified_header(token: str) -> dict[str, Any]:
    """The token's JOSE header, read before the signature is checked."""
    header = jwt.get_unverified_header(token)
    if not isinstance(header, dict):
        raise TokenRejected("The token is invalid.")
    return header


@dataclass(frozen=True, slots=True)
class ClaimChecks:
    """The registered claims `decode` checks: ``aud`` and ``iss`` when given, and the clock.

    Attributes:
        audience: the ``aud`` required; None checks none.
        issuer: the ``iss`` required; None checks none.
        leeway: seconds of clock skew allowed on ``exp`` / ``nbf`` / ``iat``.
    """

    audience: str | None
    issuer: str | None
    leeway: float


def decode(token: str, keys: Iterable[Any], alg: str, checks: ClaimChecks) -> dict[str, Any]:
    """Verify the signature and the registered claims; return the claims.

    Raises:
        TokenRejected: expired, or a claim (``aud``, ``iss`` …) does not match.
    """
    audience, issuer = checks.audience, checks.issuer
    options = {
        "require_exp": True,
        "require_aud": audience is not None,
        "require_iss": issuer is not None,
        "leeway": timedelta(seconds=checks.leeway),
    }
    try:
        return jwt.decode(
            token,
            list(keys),
            algorithms=[alg],
            options=options,
            audience=audience,
            issuer=issuer,
        )
    except ExpiredSignatureError:
        raise TokenRejected("The token has expired.") from None
    except JWTClaimsError:
        raise TokenRejected("The token's claims are not valid here.") from None


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
    if JOSE_MISSING is not None:
        raise MissingExtraError("jwt", "create_access_token") from JOSE_MISSING
    now = int(time.time())
    payload = {"iat": now, "exp": now + int(expires_in), **claims}
    return jwt.encode(payload, secret_or_key, algorithm=algorithm, headers=headers)
