"""The router's route class: body size limits (413) and a complete ``Allow`` on 405.

Both are answered as JSON before any endpoint code runs, so nothing is acquired for a
request that is too large or uses the wrong method. Validation errors are answered 422
even when the input holds non-finite numbers, and a store failure 503, never 500.
"""

from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from ._errors import store_error_response, validation_error_response
from ._exceptions import StoreError

__all__ = ["body_limited_route"]

_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        {"detail": f"The request body is larger than {limit} bytes."}, status_code=413
    )


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that ends a body growing past ``limit`` bytes with a 413 (chunked bodies)."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, detail=f"The request body is larger than {limit} bytes.")
        return message

    return limited


def body_limited_route(
    max_body_size: int, on_reject: Callable[[int, str], None] | None = None
) -> type[APIRoute]:
    """A route class answering 413 (JSON) past ``max_body_size`` bytes, and 405 with ``Allow``.

    Args:
        max_body_size: bytes a request body may have; checked on ``Content-Length`` before
            reading, and while reading a body without one.
        on_reject: called as ``on_reject(status, reason)`` for every 4xx and 5xx answer the
            route gives before a stream (metrics). Default None.
    """

    def rejected(status: int, reason: str) -> None:
        if on_reject is not None and status >= 400:
            on_reject(status, reason)

    allowed: dict[str, set[str]] = {}

    class BodyLimitedRoute(APIRoute):
        """Answers 413 (JSON) for a body over the limit; a 405 lists every method of the path."""

        def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
            super().__init__(path, endpoint, **kwargs)
            allowed.setdefault(self.path, set()).update(self.methods or ())

        async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
            methods = self.methods or set()
            response = _refusal(scope, methods, allowed.get(self.path, methods), max_body_size)
            if response is None:
                if scope["method"] in _WITH_BODY and _content_length(scope) is None:
                    receive = _limited(receive, max_body_size)
            else:
                rejected(
                    response.status_code,
                    "too_large" if response.status_code == 413 else "bad_request",
                )
                await response(scope, receive, send)
                return
            await super().handle(scope, receive, send)

        def get_route_handler(self) -> Callable[[Request], Any]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                try:
                    response: Response = await handler(request)
                except RequestValidationError as exc:  # never a 500 for a non-finite number
                    rejected(422, "invalid")
                    return validation_error_response(exc)
                except StoreError as exc:  # e.g. Redis is away: 503, no internals
                    rejected(503, "store_unavailable")
                    return store_error_response(exc)
                except StarletteHTTPException as exc:  # slowapi's RateLimitExceeded too
                    rejected(exc.status_code, _reason(exc))
                    raise
                # an answer of 400 or more that was not raised is a run's outcome (``POST
                # {path}`` of a failed run answers 502), not a refusal
                return response

            return guarded

    return BodyLimitedRoute


def _refusal(
    scope: Scope, methods: set[str], allow: set[str], max_body_size: int
) -> JSONResponse | None:
    """The 405, 400 or 413 a request gets before its body is read, or None."""
    if methods and scope["method"] not in methods:
        return JSONResponse(
            {"detail": "Method Not Allowed"}, 405, headers={"Allow": ", ".join(sorted(allow))}
        )
    declared = _content_length(scope) if scope["method"] in _WITH_BODY else None
    if declared is None:
        return None
    if not declared.isdigit():
        return JSONResponse({"detail": "Invalid Content-Length."}, 400)
    if int(declared) > max_body_size:
        return _too_large(max_body_size)
    return None


def _content_length(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return str(value.decode("latin-1"))
    return None


def _reason(exc: StarletteHTTPException) -> str:
    """A short word for a refusal: the ``error`` of its detail, else from its status."""
    detail = exc.detail
    if isinstance(detail, dict) and isinstance(detail.get("error"), str):
        return str(detail["error"])
    return _REASONS.get(exc.status_code, "refused")


_REASONS = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    406: "not_acceptable",
    413: "too_large",
    429: "rate_limited",
}
