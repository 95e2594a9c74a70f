"""JWT checks that python-jose leaves out: time claims, ``iat`` ahead, the ``crit`` header.

python-jose reads ``exp``, ``nbf`` and ``iat`` with ``int(...)``, so it takes ``"1999999999"``
(a string) and ``1e308`` for dates, and it never compares ``iat`` with the clock. RFC 7519
§2 defines a NumericDate as a JSON number of seconds since the epoch; here it must also be
finite and no later than the year 9999. The functions return one of this module's fixed
sentences (safe to show) when a check fails, or None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["MAX_NUMERIC_DATE", "header_problem", "time_claims_problem"]

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
