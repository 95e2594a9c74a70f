"""The few places where the package needs what ``ikomia-client`` keeps private.

``ikomia-client`` (``ikclient``, the ``ikomia`` extra: ``>=0.4.1,<0.5``) has no public API
for a run's raw outputs nor for its JWT's expiry, and the deployment needs both: the raw
outputs are what goes on the wire (SCALE's single-key objects), and refreshing the JWT
before it expires keeps a long stream from failing midway. Each access is here, in one
function, and ``tests/test_ikclient_adapter.py`` checks them against the installed
``ikclient`` (so an upgrade that moves them fails that test, not a user's run).

Nothing here imports ``ikclient``: each function takes the object and answers ``None``
when it does not have the expected shape.
"""

from __future__ import annotations

from typing import Any

__all__ = ["auth_of", "auth_session", "jwt_expiry", "jwt_of", "raw_outputs"]


def raw_outputs(results: Any) -> list[Any] | None:
    """The raw outputs of an ``ikclient.core.results.Results``, or None for anything else.

    Its ``_outputs``: a list of single-key dicts, as SCALE sent them.
    """
    outputs = getattr(results, "_outputs", None)
    return outputs if isinstance(outputs, list) else None


def auth_of(client: Any) -> Any:
    """The ``ScaleJwtAuth`` of an ``ikclient`` client (its ``_auth``), or None.

    None too when it has no ``jwt(force=...)`` method.
    """
    auth = getattr(client, "_auth", None)
    return auth if callable(getattr(auth, "jwt", None)) else None


def jwt_of(auth: Any) -> str | None:
    """The JWT that ``auth`` holds now (its ``_jwt``, without a ``Bearer`` prefix), or None."""
    jwt = getattr(auth, "_jwt", None)
    return str(jwt).removeprefix("Bearer ") if jwt else None


def jwt_expiry(auth: Any) -> float | None:
    """When the JWT that ``auth`` holds expires, as a Unix time (its ``_expires_at``)."""
    expires = getattr(auth, "_expires_at", None)
    return float(expires) if isinstance(expires, int | float) else None


def auth_session(client: Any) -> Any:
    """The blocking ``httpx.Client`` the client's auth fetches JWTs with, or None.

    Public on the auth object (``client``); reached through its private ``_auth``.
    """
    return getattr(auth_of(client), "client", None)
