"""Error answers that never fail themselves: validation errors and store outages as JSON.

FastAPI's default handler for `RequestValidationError` echoes each error's ``input``;
when the body held a non-finite number (``NaN``, ``Infinity``, ``1e999``, which Python's
JSON parser accepts) that echo cannot be encoded as JSON and the caller gets a plain-text
500. `validation_error_response` answers the same 422 body, but echoes an ``input`` (and
``ctx``) only when it is plain, finite, bounded JSON.

`validation_exception_handler` is the same as an exception handler for an app's own
routes::

    from fastapi.exceptions import RequestValidationError
    from fastapi_ikstream.errors import validation_exception_handler

    app.add_exception_handler(RequestValidationError, validation_exception_handler)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ._exceptions import StoreError, StoreUnavailableError

__all__ = [
    "STORE_RETRY_AFTER",
    "store_error_response",
    "store_http_error",
    "validation_error_response",
    "validation_exception_handler",
]

STORE_RETRY_AFTER = 2
"""Seconds a client is told to wait (``Retry-After``) when the run store is unavailable."""

_MAX_ECHO_DEPTH = 8
_MAX_ECHO_ITEMS = 64
_MAX_ECHO_CHARS = 1024
_MAX_ERRORS = 32


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is small, finite JSON that can be echoed as it is."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) < 2**63
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= _MAX_ECHO_CHARS
    if depth >= _MAX_ECHO_DEPTH:
        return False
    if isinstance(value, Mapping):
        return len(value) <= _MAX_ECHO_ITEMS and all(
            isinstance(key, str) and _plain(item, depth + 1) for key, item in value.items()
        )
    if isinstance(value, list | tuple):
        return len(value) <= _MAX_ECHO_ITEMS and all(_plain(item, depth + 1) for item in value)
    return False


def _clean(error: Mapping[str, Any]) -> dict[str, Any]:
    loc = [part if isinstance(part, int | str) else str(part) for part in error.get("loc", ())]
    out: dict[str, Any] = {
        "type": str(error.get("type", "value_error")),
        "loc": loc,
        "msg": str(error.get("msg", "Invalid value.")),
    }
    if "input" in error and _plain(error["input"]):
        out["input"] = error["input"]
    ctx = error.get("ctx")
    if isinstance(ctx, Mapping):
        kept = {key: value for key, value in ctx.items() if _plain(value)}
        if kept:
            out["ctx"] = kept
    return out


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    """The 422 answer to a request that failed validation, safe for any input.

    The body is FastAPI's (``{"detail": [{"type", "loc", "msg", "input"?, "ctx"?}]}``),
    at most 32 errors, with ``input`` and ``ctx`` values left out unless they are finite,
    small JSON (no ``NaN``/``Infinity``, no integer beyond 64 bits, nesting at most 8 deep).

    Args:
        exc: the validation error.

    Returns:
        A `JSONResponse` with status 422.
    """
    errors: Sequence[Any] = exc.errors()
    detail = [_clean(error) for error in errors[:_MAX_ERRORS] if isinstance(error, Mapping)]
    return JSONResponse({"detail": detail}, status_code=422)


async def validation_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    """An exception handler for `RequestValidationError` that never answers 500.

    Install it on an app whose own routes take JSON bodies::

        app.add_exception_handler(RequestValidationError, validation_exception_handler)

    The router's endpoints do this on their own. See `validation_error_response`.

    Args:
        request: the request (unused).
        exc: the `RequestValidationError`.

    Returns:
        The 422 `JSONResponse`.
    """
    if not isinstance(exc, RequestValidationError):  # pragma: no cover - registration error
        raise exc
    return validation_error_response(exc)


def store_http_error(exc: StoreError) -> HTTPException:
    """The 503 for a run store that refused an operation or cannot be reached.

    A `StoreUnavailableError` (the backend cannot be reached) gives
    ``{"detail": {"error": "store_unavailable", "message": ...}}`` and a ``Retry-After``
    header, with nothing of the backend's own text; another `StoreError` (a full store)
    gives its message as ``detail``.
    """
    if isinstance(exc, StoreUnavailableError):
        return HTTPException(
            503,
            detail={"error": "store_unavailable", "message": str(exc)},
            headers={"Retry-After": str(STORE_RETRY_AFTER)},
        )
    return HTTPException(503, detail=str(exc) or "The run store is full.")


def store_error_response(exc: StoreError) -> JSONResponse:
    """`store_http_error` as a response, for code that cannot raise."""
    error = store_http_error(exc)
    return JSONResponse({"detail": error.detail}, error.status_code, headers=error.headers)
