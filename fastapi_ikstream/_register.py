"""Route registration: the endpoints of `create_router`, declared on its `StreamRouter`.

The endpoint functions only declare parameters (what OpenAPI shows and what FastAPI
validates) and hand what they received to `RouterCore`, which does the work.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at
run time, and they name the user's own request model.
"""

from collections.abc import Awaitable, Callable
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel

from ._endpoints import EventsQuery, RouterCore
from ._inputs import query_model_for, run_request_from_query
from ._models import RunState
from ._openapi import ERROR_RESPONSES, RunCreated, RunSnapshot, stream_responses
from ._options import RouterOptions
from ._request import RunRequest
from ._response import EventStreamResponse, negotiate_media_type
from ._run import StreamingRun

__all__ = ["register_routes"]

_STATIC = FilePath(__file__).parent / "static"
# The browser module and its typings: file, media type, route name, summary, operation id.
_BROWSER_FILES = (
    (
        "ikstream.js",
        "text/javascript",
        "browser_js",
        "The browser module (an ES module)",
        "_browser_module",
    ),
    ("ikstream.d.ts", "application/typescript", "browser_typings", None, None),
)


def register_routes(
    router: APIRouter, core: RouterCore, run_provider: Any, options: RouterOptions
) -> None:
    """Declare every endpoint of ``options`` on ``router`` (see `create_router`).

    Args:
        router: the router to declare them on.
        core: the work behind the endpoints.
        run_provider: the dependency giving the run builder (`RunProvider`).
        options: the router's options.
    """
    _add_run_routes(router, core, run_provider, options)
    _add_run_id_routes(router, core, options)
    if options.browser_module:
        _add_browser_module(router, options.path, options.label)


async def _anonymous() -> Any:
    return None


def _caller(options: RouterOptions) -> Callable[..., Any]:
    """The dependency giving an endpoint's caller: ``auth``, or anonymous."""
    return options.auth if options.auth is not None else _anonymous


async def _media_type(request: Request) -> str:
    """The stream's media type from ``Accept`` (406 when it allows none)."""
    media_type = negotiate_media_type(request.headers.get("accept"))
    if media_type is None:
        raise HTTPException(
            406,
            detail="Accept must allow text/event-stream, application/jsonl or "
            "application/x-ndjson.",
        )
    return media_type


MakeRun = Callable[[Any], StreamingRun]


def _add_run_routes(
    router: APIRouter, core: RouterCore, run_provider: Any, options: RouterOptions
) -> None:
    """``{path}/stream`` (POST and GET), ``{path}`` and ``{path}/runs``."""
    path, label = options.path, options.label
    model: type[BaseModel] = options.request_model or RunRequest
    reserved = {"inputs", "task_name", "last_event_id", getattr(options.auth, "query_param", None)}
    stream_doc = stream_responses(named_events=options.named_events)
    Principal = Annotated[Any, Depends(_caller(options))]
    Runs = Annotated[MakeRun, Depends(run_provider)]
    MediaType = Annotated[str, Depends(_media_type)]

    async def stream_post(
        request: Request, payload: Any, principal: Principal, make_run: Runs, media_type: MediaType
    ) -> Response:
        return await core.stream(request, payload, principal, make_run, media_type)

    async def stream_get(
        request: Request, payload: Any, principal: Principal, make_run: Runs, media_type: MediaType
    ) -> Response:
        payload = run_request_from_query(request, payload, reserved)
        return await core.stream(request, payload, principal, make_run, media_type)

    async def run_to_end(
        request: Request, payload: Any, principal: Principal, make_run: Runs
    ) -> Response:
        return await core.run_to_end(request, payload, principal, make_run)

    async def start_detached(
        request: Request, payload: Any, principal: Principal, make_run: Runs
    ) -> JSONResponse:
        return await core.start_detached(request, payload, principal, make_run)

    body, query = Annotated[model, Body()], Annotated[query_model_for(model), Query()]
    for endpoint in (stream_post, run_to_end, start_detached):
        endpoint.__annotations__["payload"] = body
    stream_get.__annotations__["payload"] = query
    streams = {"response_class": EventStreamResponse, "responses": stream_doc}
    _declare(
        router,
        path,
        label,
        ("POST", "/stream", stream_post, "stream", f"Run {label} and stream its events", streams),
        (
            "GET",
            "/stream",
            stream_get,
            "stream_get",
            f"Run {label} and stream its events (for EventSource)",
            streams,
        ),
        (
            "POST",
            "",
            run_to_end,
            "run",
            f"Run {label} to the end",
            {
                "response_model": RunState,
                "response_model_exclude_none": True,
                "responses": _RUN_TO_END_RESPONSES,
            },
        ),
        (
            "POST",
            "/runs",
            start_detached,
            "start",
            f"Start a {label} run detached from any connection",
            {"status_code": 201, "response_model": RunCreated},
        ),
    )


_RUN_TO_END_RESPONSES: dict[int | str, dict[str, Any]] = {
    502: {"model": RunState, "description": "The run failed (the `failed` state)."},
    504: {"model": RunState, "description": "The run timed out (`failed`, code `timeout`)."},
    409: {"model": RunState, "description": "The run was cancelled."},
}

RunIdPath = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$")]


def _add_run_id_routes(router: APIRouter, core: RouterCore, options: RouterOptions) -> None:
    """``{path}/runs/{run_id}/events``, ``GET`` and ``DELETE {path}/runs/{run_id}``."""
    path, label = options.path, options.label
    stream_doc = stream_responses(named_events=options.named_events)
    Principal = Annotated[Any, Depends(_caller(options))]

    async def run_events(  # noqa: PLR0913 - a FastAPI endpoint: each parameter is a request field
        request: Request,
        run_id: RunIdPath,
        principal: Principal,
        media_type: Annotated[str, Depends(_media_type)],
        last_event_id: Annotated[
            str | None, Query(description="For clients that cannot set Last-Event-ID.")
        ] = None,
        after_seq: Annotated[
            int | None,
            Query(ge=0, le=2**53 - 1, description="Resume after this seq (JSON lines)."),
        ] = None,
    ) -> Response:
        raw = request.headers.get("last-event-id") or last_event_id
        query = EventsQuery(raw, after_seq)
        return await core.events(request, run_id, query, principal, media_type)

    async def run_state(run_id: RunIdPath, principal: Principal) -> RunSnapshot:
        return await core.state(run_id, principal)

    async def cancel_run(run_id: RunIdPath, principal: Principal) -> JSONResponse:
        return await core.cancel(run_id, principal)

    snapshot = {"response_model": RunSnapshot, "response_model_exclude_none": True}
    _declare(
        router,
        path,
        label,
        (
            "GET",
            "/runs/{run_id}/events",
            run_events,
            "events",
            f"Stream a {label} run's events, from the start or from Last-Event-ID",
            {
                "response_class": EventStreamResponse,
                "responses": {
                    **stream_doc,
                    204: {"description": "The run has ended: stop reconnecting."},
                    404: ERROR_RESPONSES[404],
                },
            },
        ),
        (
            "GET",
            "/runs/{run_id}",
            run_state,
            "state",
            f"The latest state of a {label} run",
            {**snapshot, "responses": {404: ERROR_RESPONSES[404]}},
        ),
        (
            "DELETE",
            "/runs/{run_id}",
            cancel_run,
            "cancel",
            f"Cancel a {label} run",
            {
                **snapshot,
                "status_code": 202,
                "responses": {
                    200: {
                        "model": RunSnapshot,
                        "description": "The run had ended: nothing to cancel.",
                    },
                    404: ERROR_RESPONSES[404],
                },
            },
        ),
    )


# One endpoint: method, path under the router's, function, operation id, summary, options.
_Route = tuple[str, str, Callable[..., Any], str, str, dict[str, Any]]


def _declare(router: APIRouter, path: str, label: str, *routes: _Route) -> None:
    """Add each of ``routes`` under ``path``, its operation id prefixed with ``label``."""
    for method, under, endpoint, operation, summary, options in routes:
        router.add_api_route(
            f"{path}{under}" or "/",
            endpoint,
            methods=[method],
            summary=summary,
            operation_id=f"{label}_{operation}",
            **options,
        )


def _add_browser_module(router: APIRouter, path: str, label: str) -> None:
    """``{path}/ikstream.js`` and ``{path}/ikstream.d.ts``, left out of the schema."""
    for file, media_type, name, summary, suffix in _BROWSER_FILES:
        router.add_api_route(
            f"{path}/{file}",
            _static_file(_STATIC / file, media_type),
            methods=["GET"],
            name=name,
            summary=summary,
            operation_id=None if suffix is None else label + suffix,
            response_class=FileResponse,
            include_in_schema=False,
        )


def _static_file(file: FilePath, media_type: str) -> Callable[[], Awaitable[FileResponse]]:
    async def static_file() -> FileResponse:
        return FileResponse(
            file, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"}
        )

    return static_file
