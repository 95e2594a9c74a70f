"""Who a caller is: one function for run ownership, one for the keys of limits and quotas.

A run belongs to the identity that started it: the principal's subject *and* who vouched
for it (its ``authority``: the auth scheme and, for JWTs, the issuer), so an API key named
``alice`` and a JWT subject ``alice`` are two callers. Anonymous callers own nothing (any
caller may read an anonymous run, as before) and are counted by their address.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

__all__ = ["client_address", "owner_of", "quota_key"]


def owner_of(principal: Any) -> str | None:
    """The identity that owns the runs ``principal`` starts, or None when auth is off.

    Args:
        principal: what the router's auth dependency returned: a ``Principal`` (its
            ``authority`` and ``subject`` are used), any object with a ``subject``, a
            string, or None.

    Returns:
        ``"{authority}|{subject}"`` (``"|{subject}"`` without an authority), or None.
    """
    if principal is None:
        return None
    subject = str(getattr(principal, "subject", principal))
    authority = getattr(principal, "authority", None) or ""
    return f"{authority}|{subject}"


def client_address(request: Request, *, trust_forwarded_for: bool = False) -> str:
    """The address that keys an anonymous caller.

    Args:
        request: the incoming request.
        trust_forwarded_for: use the first address of ``X-Forwarded-For`` when it is a valid
            IP address. Enable it only behind a proxy that sets the header itself; otherwise
            any caller can pick its own key. (uvicorn's ``--forwarded-allow-ips`` is another
            way: it rewrites the peer address for trusted proxies only.) Default False.

    Returns:
        an IP address, or ``"unknown"`` when the server reports no peer.
    """
    import ipaddress

    if trust_forwarded_for:
        first = request.headers.get("x-forwarded-for", "").split(",")[0].strip()
        try:
            return str(ipaddress.ip_address(first))
        except ValueError:
            pass
    return request.client.host if request.client is not None else "unknown"


def quota_key(request: Request, principal: Any, *, trust_forwarded_for: bool = False) -> str:
    """The key that rate limits and per-caller quotas count under.

    Returns:
        ``"sub:{owner}"`` for an authenticated caller (see `owner_of`), else
        ``"addr:{address}"`` (see `client_address`).
    """
    owner = owner_of(principal)
    if owner is not None:
        return f"sub:{owner}"
    return f"addr:{client_address(request, trust_forwarded_for=trust_forwarded_for)}"
