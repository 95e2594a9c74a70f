"""What a JWT must satisfy: accepted algorithms, scopes, and the checks python-jose leaves out.

Those are the time claims, an ``iat`` ahead of the clock, and the ``crit`` header.

python-jose reads ``exp``, ``nbf`` and ``iat`` with ``int(...)``, so it takes ``"1999999999"``
(a string) and ``1e308`` for dates, and it never compares ``iat`` with the clock. RFC 7519
§2 defines a NumericDate as a JSON number of seconds since the epoch; here it must also be
finite and no later than the year 9999. The functions return one of this module's fixed
sentences (safe to show) when a check fails, or None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = [
    "EC",
    "HMAC",
    "KTY",
    "MAX_NUMERIC_DATE",
    "RSA",
    "TokenRejected",
    "check_algorithms",
    "header_problem",
    "scopes_of",
    "time_claims_problem",
]

HMAC: Final = frozenset({"HS256", "HS384", "HS512"})
RSA: Final = frozenset({"RS256", "RS384", "RS512"})
EC: Final = frozenset({"ES256", "ES384", "ES512"})
KTY: Final = {**dict.fromkeys(RSA, "RSA"), **dict.fromkeys(EC, "EC")}
"""The JWK key type (``kty``) of each asymmetric algorithm."""


class TokenRejected(Exception):
    """A token failed a check; the message is one of the package's fixed sentences."""


MAX_NUMERIC_DATE: Final = 253_402_300_799
"""9999-12-31T23:59:59Z, the latest date accepted in ``exp``, ``nbf`` or ``iat``."""

_TIME_CLAIMS: Final = ("exp", "nbf", "iat")


def header_problem(header: Mapping[str, Any]) -> str | None:
    """Why the JOSE header is refused, or None.

    RFC 7515 §4.1.11: a recipient that does not understand every extension listed in
    ``crit`` must reject the token. No extension is understood here, so any ``crit`` (even
    malformed or empty, which §4.1.11 forbids too) is refused.
    """
    if "crit" in header:
        return "The token lists critical header parameters that are not supported."
    return None


def _numeric_date(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and 0 <= value <= MAX_NUMERIC_DATE


def time_claims_problem(claims: Mapping[str, Any], *, leeway: float, now: float) -> str | None:
    """Why the time claims are refused, or None.

    Args:
        claims: the verified claims.
        leeway: seconds of clock skew allowed; an ``iat`` up to this far ahead is accepted.
        now: the current Unix time.
    """
    for name in _TIME_CLAIMS:
        if name in claims and not _numeric_date(claims[name]):
            return f"The token's {name} claim is not a valid date."
    if "iat" in claims and claims["iat"] > now + leeway:
        return "The token was issued in the future (iat)."
    return None


def check_algorithms(algorithms: Sequence[str]) -> frozenset[str]:
    """The accepted algorithms as a set, all from one family.

    Raises:
        ValueError: none, ``none``, an unknown one, or HMAC mixed with RSA/EC.
    """
    if isinstance(algorithms, str):
        raise ValueError("algorithms is a list, e.g. ['RS256']")
    chosen = frozenset(algorithms)
    if not chosen:
        raise ValueError("algorithms is required, e.g. ['RS256']")
    if any(alg.lower() == "none" for alg in chosen):
        raise ValueError("the 'none' algorithm is never accepted")
    unknown = chosen - HMAC - RSA - EC
    if unknown:
        raise ValueError(f"unsupported algorithms: {sorted(unknown)}")
    if chosen & HMAC and chosen - HMAC:
        raise ValueError("algorithms may not mix HMAC (HS*) with RSA/EC (RS*, ES*)")
    return chosen


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """The scopes granted by ``scope`` (space-separated) and ``scp`` (list or string)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(item for item in value if isinstance(item, str))
    return frozenset(found)
