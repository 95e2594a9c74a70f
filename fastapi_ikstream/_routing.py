"""`create_router`: one call turns a deployment into documented, streaming FastAPI endpoints.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at
run time, and they name the user's own request model.
"""

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends as DependsParam
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError, model_validator
from starlette.types import Receive, Scope, Send

from ._cursor import MAX_SEQ, parse_seq
from ._deployments import Deployment, as_deployment
from ._errors import store_error_response, store_http_error, validation_error_response
from ._exceptions import RunNotFoundError, StoreError
from ._models import EventType, RunState
from ._openapi import ERROR_RESPONSES, RunCreated, RunSnapshot, stream_responses
from ._request import RunQuery, RunRequest
from ._response import EventStreamResponse, negotiate_media_type
from ._run import DEFAULT_TIMEOUT, StreamingRun, new_run_id
from ._runs import DisconnectPolicy, RunManager
from ._store import MemoryRunStore, RunStore
from ._stores import make_store

__all__ = ["DeploymentProvider", "RunProvider", "StreamRouter", "create_router"]

_STATIC = __file__.rsplit("/", 1)[0] + "/static/ikstream.js"


class DeploymentProvider:
    """Dependency that gives the router's deployment; override it in tests.

    Example::

        app.dependency_overrides[router.deployment_provider] = lambda: FakeDeployment(states)
    """

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment

    async def __call__(self) -> Deployment:
        """The deployment."""
        return self.deployment


class RunProvider:
    """Dependency that creates the `StreamingRun` for a request (override it to customize).

    It reads the validated request model that the endpoint's input dependency stored on
    ``request.state.ikstream_input``, asks the deployment for a run source, and yields the
    run; once the response is over, a run that never started is closed.

    Args:
        deployment_provider: the dependency giving the deployment.
        include_inputs: send the inputs on the ``result`` event.
        timeout: seconds a deployment may run (``failed`` with code ``timeout`` after).
        keep_alive: seconds of silence before a keep-alive; 0 disables.
        retry: SSE ``retry:`` in milliseconds, on each connection's first event.
    """

    def __init__(
        self,
        deployment_provider: DeploymentProvider,
        *,
        include_inputs: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        keep_alive: float = 10.0,
        retry: int | None = 3000,
    ) -> None:
        self.deployment_provider = deployment_provider
        self.include_inputs = include_inputs
        self.timeout = timeout
        self.keep_alive = keep_alive
        self.retry = retry
        # FastAPI reads the dependency's parameters from this signature.
        self.__signature__ = inspect.Signature(
            [
                inspect.Parameter("request", _KW, annotation=Request),
                inspect.Parameter(
                    "deployment", _KW, annotation=Any, default=Depends(deployment_provider)
                ),
            ]
        )

    async def __call__(self, request: Request, deployment: Any) -> AsyncIterator[StreamingRun]:
        """Yield the request's run (not started); close its source if it never ran."""
        payload = getattr(request.state, "ikstream_input", None)
        if isinstance(payload, RunRequest):
            inputs: Any = payload.inputs
            parameters: dict[str, Any] = dict(payload.parameters)
            if payload.task_name:
                parameters["task_name"] = payload.task_name
        else:
            inputs, parameters = payload, {}
        run = StreamingRun(
            # a request that resumes a known run (see ``admission``) opens no new one
            _never_started
            if getattr(request.state, "ikstream_resume", False)
            else as_deployment(deployment).open_run(inputs, parameters),
            run_id=new_run_id(),
            inputs=inputs if self.include_inputs and isinstance(payload, RunRequest) else None,
            include_inputs=self.include_inputs,
            keep_alive=self.keep_alive,
            timeout=self.timeout,
            retry=self.retry,
        )
        try:
            yield run
        finally:
            source = run.source
            aclose = getattr(source, "aclose", None)
            if run.task is None and aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()


_KW = inspect.Parameter.POSITIONAL_OR_KEYWORD


def _never_started(on_progress: Any) -> None:
    """The source of a run made for a request that resumes another run; it never starts."""


@dataclass(slots=True)
class _Admission:
    principal: Any
    headers: dict[str, str]
    release: Callable[[], Any] | None


class StreamRouter(APIRouter):
    """The `APIRouter` made by `create_router`, with handles for tests and extensions.

    Attributes:
        deployment_provider: the deployment dependency (override it with a fake).
        run_provider: the dependency that creates each `StreamingRun`.
        manager: the `RunManager` driving this router's runs.
        store: the run store.
    """

    deployment_provider: DeploymentProvider
    run_provider: RunProvider
    manager: RunManager
    store: RunStore


def _parse_last_event_id(value: str | None) -> tuple[str | None, int] | None:
    """``"{run_id}:{seq}"`` (or a bare seq) into ``(run_id, seq)``; None if malformed."""
    if not value:
        return None
    run_id, sep, seq = value.strip().rpartition(":")
    number = parse_seq(seq)  # ASCII digits, below 2**63
    if number is None:
        return None
    return (run_id if sep else None), number


def _route_class(max_body_size: int) -> type[APIRoute]:
    allowed: dict[str, set[str]] = {}

    class BodyLimitedRoute(APIRoute):
        """Answers 413 (JSON) for a body over the limit; a 405 lists every method of the path."""

        def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
            super().__init__(path, endpoint, **kwargs)
            allowed.setdefault(self.path, set()).update(self.methods or ())

        async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
            if self.methods and scope["method"] not in self.methods:
                methods = ", ".join(sorted(allowed.get(self.path, self.methods)))
                response = JSONResponse(
                    {"detail": "Method Not Allowed"}, 405, headers={"Allow": methods}
                )
                await response(scope, receive, send)
                return
            await super().handle(scope, receive, send)

        def get_route_handler(self) -> Callable[[Request], Any]:
            handler = super().get_route_handler()

            async def limited(request: Request) -> Response:
                if request.method in ("POST", "PUT", "PATCH"):
                    declared = request.headers.get("content-length")
                    if declared is not None:
                        if not declared.isdigit():
                            return JSONResponse({"detail": "Invalid Content-Length."}, 400)
                        if int(declared) > max_body_size:
                            return _too_large(max_body_size)
                    else:
                        body = bytearray()
                        async for chunk in request.stream():
                            body.extend(chunk)
                            if len(body) > max_body_size:
                                return _too_large(max_body_size)
                        request._body = bytes(body)
                try:
                    response: Response = await handler(request)
                except RequestValidationError as exc:  # never a 500 for a non-finite number
                    return validation_error_response(exc)
                except StoreError as exc:  # e.g. Redis is away: 503, no internals
                    return store_error_response(exc)
                return response

            return limited

    return BodyLimitedRoute


def _drop_empty_items(cls: type[BaseModel], data: Any) -> Any:
    """``?inputs=`` is how an empty list looks in a query string: read it as ``[]``."""
    if isinstance(data, dict):
        return {
            key: [item for item in value if item != ""] if isinstance(value, list) else value
            for key, value in data.items()
        }
    return data


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        {"detail": f"The request body is larger than {limit} bytes."}, status_code=413
    )


def create_router(
    deployment: Any,
    *,
    path: str = "",
    request_model: type[BaseModel] | None = None,
    auth: Callable[..., Any] | None = None,
    rate_limit: Any = None,
    rate_limit_storage: str = "memory://",
    rate_limit_scope: str | None = None,
    rate_limit_fail_open: bool = False,
    max_concurrent_runs: int | None = None,
    keep_alive: float = 10.0,
    retry: int | None = 3000,
    include_inputs: bool = False,
    dependencies: Sequence[DependsParam] = (),
    tags: list[str] | None = None,
    store: RunStore | str | None = None,
    on_disconnect: DisconnectPolicy = "cancel",
    reconnect_grace: float = 3.0,
    drain_timeout: float = 5.0,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_body_size: int = 10 * 1024 * 1024,
    trust_forwarded_for: bool = False,
    name: str | None = None,
    browser_module: bool = True,
) -> StreamRouter:
    """Make an `APIRouter` that runs ``deployment`` and streams its runs.

    Mount it with ``app.include_router(router, prefix="/api")``. Endpoints, under ``path``:

    - ``POST {path}/stream``: run and stream (SSE, or JSON lines for ``Accept:
      application/jsonl``); a request with ``Last-Event-ID`` of a known run resumes it.
    - ``GET {path}/stream?…``: the same for ``EventSource``; fields from the query string.
    - ``POST {path}``: run to the end; answers the final state as JSON.
    - ``POST {path}/runs``: start a run detached from any connection (201).
    - ``GET {path}/runs/{run_id}/events``: stream a run from the start or a cursor.
    - ``GET {path}/runs/{run_id}``: the run's latest state; ``DELETE``: cancel it.
    - ``GET {path}/ikstream.js``: the browser module.

    Args:
        deployment: a `Deployment`, or a function the `as_deployment` rules accept.
        path: path of the endpoints, e.g. ``"/generate-image"``. Default ``""``.
        request_model: the body model; default `RunRequest` (inputs, parameters, task_name).
        auth: a dependency giving the caller's ``Principal`` (e.g. ``JWTBearer``); None is open.
        rate_limit: ``"10/minute;200/day"`` or a ``RateLimit``; per principal (or address).
        rate_limit_storage: ``limits`` storage URI, ``memory://`` or ``redis://…``.
        rate_limit_scope: the budget's name in a shared storage, the same in every worker.
            Default ``"ikstream:{name}"`` for a shared storage, unique to the router in memory.
        rate_limit_fail_open: when ``rate_limit_storage`` cannot be reached, let requests and
            runs through uncounted (logged) instead of answering 503; applies to
            ``rate_limit`` strings and ``max_concurrent_runs``. Default False.
        max_concurrent_runs: runs one principal may have going at once (429 beyond).
        keep_alive: seconds of silence before a keep-alive is sent; 0 disables. Default 10.0.
        retry: SSE ``retry:`` in milliseconds on each connection's first event. Default 3000.
        include_inputs: send the inputs on the ``result`` event. Default False.
        dependencies: extra dependencies for every endpoint.
        tags: OpenAPI tags.
        store: a `RunStore`, a URI (``memory://``, ``redis://…``), or None for memory.
        on_disconnect: ``"cancel"`` (default) cancels a run ``reconnect_grace`` seconds after
            its last reader left; ``"continue"`` lets it finish in the store.
        reconnect_grace: seconds to wait for a reader to come back. Default 3.0.
        drain_timeout: seconds runs may take to finish at shutdown. Default 5.0.
        timeout: seconds a deployment may run. Default 3600.0.
        max_body_size: bytes a request body may have (413 beyond). Default 10 MiB.
        trust_forwarded_for: key rate limits on ``X-Forwarded-For`` (behind a trusted proxy).
        name: operation id prefix and summary name. Default from ``path``.
        browser_module: serve ``{path}/ikstream.js``. Default True.

    Returns:
        A `StreamRouter` (an `APIRouter`).

    Raises:
        TypeError: ``deployment`` is not a deployment.
        MissingExtraError: ``rate_limit``/``max_concurrent_runs`` without the ``ratelimit`` extra.
    """
    model: type[BaseModel] = request_model or RunRequest
    label = name or (path.strip("/").replace("/", "_").replace("-", "_") or "run")
    run_store = make_store(store) if store is not None else MemoryRunStore()
    manager = RunManager(
        run_store,
        on_disconnect=on_disconnect,
        reconnect_grace=reconnect_grace,
        drain_timeout=drain_timeout,
    )
    deployment_provider = DeploymentProvider(as_deployment(deployment))
    run_provider = RunProvider(
        deployment_provider,
        include_inputs=include_inputs,
        timeout=timeout,
        keep_alive=keep_alive,
        retry=retry,
    )
    # A shared storage needs the same budget name in every worker: derive it from the router.
    shared = not rate_limit_storage.startswith("memory://")
    scope = rate_limit_scope or (f"ikstream:{label}" if shared else None)
    limiter = None
    if rate_limit is not None:
        from .ratelimit import RateLimit

        limiter = (
            RateLimit(
                rate_limit,
                storage_uri=rate_limit_storage,
                scope=scope,
                trust_forwarded_for=trust_forwarded_for,
                fail_open=rate_limit_fail_open,
            )
            if isinstance(rate_limit, str)
            else rate_limit
        )
    concurrency = None
    if max_concurrent_runs is not None:
        from .ratelimit import ConcurrencyLimit

        concurrency = ConcurrencyLimit(
            max_concurrent_runs,
            storage_uri=rate_limit_storage,
            scope=scope,
            fail_open=rate_limit_fail_open,
        )

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await manager.ensure_started()
        manager.install_signal_handlers()
        try:
            yield
        finally:
            await manager.aclose()
            # the limits this router made hold Redis connections: close them
            for made in (limiter if isinstance(rate_limit, str) else None, concurrency):
                if made is not None:
                    await made.aclose()

    router = StreamRouter(
        tags=list(tags) if tags else None,
        dependencies=list(dependencies),
        lifespan=lifespan,
        route_class=_route_class(max_body_size),
        responses=ERROR_RESPONSES,
    )
    router.deployment_provider = deployment_provider
    router.run_provider = run_provider
    router.manager = manager
    router.store = run_store

    if auth is None:

        async def principal_dep() -> Any:
            return None

    else:
        principal_dep = auth

    def subject_of(principal: Any) -> str | None:
        return None if principal is None else str(getattr(principal, "subject", principal))

    def client_key(request: Request, principal: Any) -> str:
        subject = subject_of(principal)
        if subject is not None:
            return "principal:" + subject
        from .ratelimit import client_address

        return "address:" + client_address(request, trust_forwarded_for=trust_forwarded_for)

    # Dependencies are ``async def``: FastAPI runs a plain ``def`` in its thread pool.
    async def media_type_dep(request: Request) -> str:
        media_type = negotiate_media_type(request.headers.get("accept"))
        if media_type is None:
            raise HTTPException(
                406,
                detail="Accept must allow text/event-stream, application/jsonl or "
                "application/x-ndjson.",
            )
        return media_type

    async def resumable(request: Request, principal: Any) -> tuple[str, int] | None:
        parsed = _parse_last_event_id(request.headers.get("last-event-id"))
        if parsed is None or parsed[0] is None:
            return None
        info = await run_store.get_info(parsed[0])
        if info is None or (info.principal is not None and info.principal != subject_of(principal)):
            return None
        return parsed[0], parsed[1]

    async def admission(request: Request, principal: Any = Depends(principal_dep)) -> _Admission:
        if not manager.accepting:
            raise HTTPException(503, detail="The server is shutting down; try again.")
        if request.url.path.endswith("/stream") and await resumable(request, principal):
            request.state.ikstream_resume = True
            return _Admission(principal, {}, None)
        headers: dict[str, str] = {}
        if limiter is not None:
            headers = dict(await limiter.hit(request, principal))
        release = None
        if concurrency is not None:
            release = await concurrency.acquire(client_key(request, principal))
        return _Admission(principal, headers, release)

    async def body_input(request: Request, payload: Annotated[Any, Body()]) -> Any:
        request.state.ikstream_input = payload
        return payload

    reserved = {"inputs", "task_name", "last_event_id", getattr(auth, "query_param", None)}

    async def query_input(request: Request, payload: Annotated[Any, Query()]) -> Any:
        if isinstance(payload, RunQuery):
            parameters = {
                key: value for key, value in request.query_params.items() if key not in reserved
            }
            try:
                payload = RunRequest(
                    inputs=payload.inputs, task_name=payload.task_name, parameters=parameters
                )
            except ValidationError as exc:
                raise RequestValidationError(exc.errors(include_url=False)) from exc
        request.state.ikstream_input = payload
        return payload

    # Query strings carry other things too (an access token, a cache buster): ignore them.
    query_model = (
        RunQuery
        if model is RunRequest
        else type(
            model.__name__ + "Query",
            (model,),
            {
                "model_config": {**model.model_config, "extra": "ignore"},
                "__module__": model.__module__,
                "_drop_empty_items": model_validator(mode="before")(_drop_empty_items),
            },
        )
    )
    body_input.__annotations__["payload"] = Annotated[model, Body()]
    query_input.__annotations__["payload"] = Annotated[query_model, Query()]

    async def start(run: StreamingRun, admitted: _Admission) -> None:
        try:
            await manager.start_run(
                run, principal=subject_of(admitted.principal), release=admitted.release
            )
        except StoreError as exc:
            if admitted.release is not None:
                await admitted.release()
            raise store_http_error(exc) from exc

    async def open_stream(
        run_id: str, after_seq: int, media_type: str, headers: dict[str, str]
    ) -> EventStreamResponse:
        subscription = run_store.subscribe(run_id, after_seq)
        await manager.reader_joined(run_id)
        return EventStreamResponse(
            subscription,
            media_type=media_type,
            keep_alive=keep_alive,
            retry=retry,
            headers={**headers, "X-Run-Id": run_id},
            on_close=lambda: manager.reader_left(run_id),
            registry=manager.streams,
        )

    async def stream_new(
        request: Request,
        media_type: str = Depends(media_type_dep),
        admitted: _Admission = Depends(admission),
        run: StreamingRun = Depends(run_provider),
    ) -> Response:
        resume = await resumable(request, admitted.principal)
        if resume is not None:
            run_id, seq = resume
            info = await run_store.get_info(run_id)
            if info is not None and info.finished and seq >= info.last_seq:
                return Response(status_code=204)
            return await open_stream(run_id, seq, media_type, admitted.headers)
        await start(run, admitted)
        return await open_stream(run.run_id, 0, media_type, admitted.headers)

    stream_doc = stream_responses()
    stream_summary = f"Run {label} and stream its events"

    # One endpoint, two routes: POST reads the request model from the body, GET (for
    # EventSource, which can only GET) from the query string.
    for method, input_dependency, note, suffix in (
        ("POST", body_input, "", ""),
        ("GET", query_input, " (for EventSource)", "_get"),
    ):
        router.add_api_route(
            f"{path}/stream",
            stream_new,
            methods=[method],
            summary=stream_summary + note,
            operation_id=f"{label}_stream{suffix}",
            response_class=EventStreamResponse,
            responses=stream_doc,
            dependencies=[Depends(input_dependency)],
        )

    @router.post(
        path or "/",
        summary=f"Run {label} to the end",
        operation_id=f"{label}_run",
        response_model=RunState,
        response_model_exclude_none=True,
        responses={
            502: {"model": RunState, "description": "The run failed (the `failed` state)."},
            504: {
                "model": RunState,
                "description": "The run timed out (`failed`, code `timeout`).",
            },
            409: {"model": RunState, "description": "The run was cancelled."},
        },
        dependencies=[Depends(body_input)],
    )
    async def run_to_end(
        admitted: _Admission = Depends(admission), run: StreamingRun = Depends(run_provider)
    ) -> Response:
        await start(run, admitted)
        subscription = run_store.subscribe(run.run_id, 0)
        await manager.reader_joined(run.run_id)
        final: str | None = None
        final_type = "done"
        try:
            while (batch := await subscription.next_batch(None)) is not None:
                for event in batch:
                    if event.type not in ("done", "reset", "log", "progress", "partial", "run"):
                        final, final_type = event.data, event.type
        finally:
            await subscription.aclose()
            await manager.reader_left(run.run_id)
        status = 200
        if final_type == EventType.FAILED:
            status = 504 if '"code":"timeout"' in (final or "") else 502
        elif final_type == EventType.CANCELLED:
            status = 409
        return Response(
            final or "{}",
            status_code=status,
            media_type="application/json",
            headers=admitted.headers,
        )

    @router.post(
        f"{path}/runs",
        summary=f"Start a {label} run detached from any connection",
        operation_id=f"{label}_start",
        status_code=201,
        response_model=RunCreated,
        dependencies=[Depends(body_input)],
    )
    async def start_detached(
        request: Request,
        admitted: _Admission = Depends(admission),
        run: StreamingRun = Depends(run_provider),
    ) -> JSONResponse:
        await start(run, admitted)
        base = str(request.url).split("?", 1)[0].rstrip("/")
        body = RunCreated(
            run_id=run.run_id,
            events_url=f"{base}/{run.run_id}/events",
            state_url=f"{base}/{run.run_id}",
            cancel_url=f"{base}/{run.run_id}",
        )
        return JSONResponse(body.model_dump(), status_code=201, headers=admitted.headers)

    async def owned_info(run_id: str, principal: Any) -> Any:
        info = await run_store.get_info(run_id)
        if info is None or (info.principal is not None and info.principal != subject_of(principal)):
            raise HTTPException(404, detail="No such run.")
        return info

    RunIdPath = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$")]

    @router.get(
        f"{path}/runs/{{run_id}}/events",
        summary=f"Stream a {label} run's events, from the start or from Last-Event-ID",
        operation_id=f"{label}_events",
        response_class=EventStreamResponse,
        responses={
            **stream_doc,
            204: {"description": "The run has ended: stop reconnecting."},
            404: ERROR_RESPONSES[404],
        },
    )
    async def run_events(
        request: Request,
        run_id: RunIdPath,
        last_event_id: Annotated[
            str | None, Query(description="For clients that cannot set Last-Event-ID.")
        ] = None,
        after_seq: Annotated[
            int | None,
            Query(ge=0, le=MAX_SEQ, description="Resume after this seq (JSON lines)."),
        ] = None,
        media_type: str = Depends(media_type_dep),
        principal: Any = Depends(principal_dep),
    ) -> Response:
        info = await owned_info(run_id, principal)
        cursor = 0
        raw = request.headers.get("last-event-id") or last_event_id
        parsed = _parse_last_event_id(raw)
        if parsed is not None and parsed[0] in (None, run_id):
            cursor = parsed[1]
        if after_seq is not None:
            cursor = after_seq
        if info.finished and cursor >= info.last_seq:
            return Response(status_code=204)
        if not manager.accepting:  # a stream opened now would hold the shutdown up
            raise HTTPException(503, detail="The server is shutting down; try again.")
        try:
            return await open_stream(run_id, cursor, media_type, {})
        except RunNotFoundError as exc:
            raise HTTPException(404, detail="No such run.") from exc

    @router.get(
        f"{path}/runs/{{run_id}}",
        summary=f"The latest state of a {label} run",
        operation_id=f"{label}_state",
        response_model=RunSnapshot,
        response_model_exclude_none=True,
        responses={404: ERROR_RESPONSES[404]},
    )
    async def run_state(run_id: RunIdPath, principal: Any = Depends(principal_dep)) -> RunSnapshot:
        info = await owned_info(run_id, principal)
        return RunSnapshot(
            run_id=run_id,
            status=info.status,
            last_seq=info.last_seq,
            finished=info.finished,
            latest=RunState.model_validate_json(info.latest) if info.latest else None,
        )

    @router.delete(
        f"{path}/runs/{{run_id}}",
        summary=f"Cancel a {label} run",
        operation_id=f"{label}_cancel",
        status_code=202,
        response_model=RunSnapshot,
        response_model_exclude_none=True,
        responses={404: ERROR_RESPONSES[404]},
    )
    async def cancel_run(
        run_id: RunIdPath, principal: Any = Depends(principal_dep)
    ) -> JSONResponse:
        info = await owned_info(run_id, principal)
        accepted = await run_store.request_cancel(run_id, "cancelled by the client")
        if accepted:
            await asyncio.sleep(0)
        snapshot = RunSnapshot(
            run_id=run_id, status=info.status, last_seq=info.last_seq, finished=not accepted
        )
        return JSONResponse(
            snapshot.model_dump(exclude_none=True), status_code=202 if accepted else 200
        )

    if browser_module:

        @router.get(
            f"{path}/ikstream.js",
            summary="The browser module (an ES module)",
            operation_id=f"{label}_browser_module",
            response_class=FileResponse,
            include_in_schema=False,
        )
        async def browser_js() -> FileResponse:
            return FileResponse(
                _STATIC,
                media_type="text/javascript",
                headers={"Cache-Control": "public, max-age=3600"},
            )

    return router
