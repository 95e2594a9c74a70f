"""`create_router`: one call turns a deployment into documented, streaming FastAPI endpoints.

The router is assembled from named parts, each in its own module:

- `_route` — the route class: 413 for large bodies, 405 with a complete ``Allow``;
- `_inputs` — where the input comes from (JSON body, or the query string for ``GET``);
- `_admission` — the limits checked after auth and validation (rate limit, quotas);
- `_runs` — the run lifecycle (`RunManager`);
- `_endpoints` — what each endpoint does (`RouterCore`).

This module holds the dependencies users override (`DeploymentProvider`, `RunProvider`)
and declares the endpoints, whose parameters are what OpenAPI shows.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at
run time, and they name the user's own request model.
"""

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, Response
from fastapi.params import Depends as DependsParam
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel

from ._admission import Admission, Quotas
from ._deployments import Deployment, as_deployment
from ._endpoints import RouterCore
from ._exceptions import DeploymentError
from ._inputs import query_model_for, run_request_from_query
from ._memory import MemoryRunStore
from ._models import RunState
from ._observe import OnUsage, RunObserver
from ._openapi import ERROR_RESPONSES, RunCreated, RunSnapshot, stream_responses
from ._request import RunRequest
from ._response import EventStreamResponse, negotiate_media_type
from ._route import body_limited_route
from ._run import DEFAULT_TIMEOUT, StreamingRun, new_run_id
from ._runs import DEFAULT_RECONNECT_GRACE, DisconnectPolicy, RunManager
from ._store import RunStore
from ._stores import make_store

__all__ = ["DeploymentProvider", "RunProvider", "StreamRouter", "create_router"]

_STATIC = __file__.rsplit("/", 1)[0] + "/static/ikstream.js"
_TYPINGS = __file__.rsplit("/", 1)[0] + "/static/ikstream.d.ts"
_KW = inspect.Parameter.POSITIONAL_OR_KEYWORD


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
    """Dependency giving the function that builds a request's `StreamingRun`; override it.

    The function takes the validated input (a `RunRequest`, or the router's own
    ``request_model``) and returns a run, not started. It is called only when a request
    starts a run: never for a resume, nor for a request refused by a limit.

    Args:
        deployment_provider: the dependency giving the deployment.
        include_inputs: send the inputs on the ``result`` event.
        timeout: seconds a deployment may run (``failed`` with code ``timeout`` after).
        keep_alive: seconds of silence before a keep-alive is sent; 0 disables.
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
                inspect.Parameter(
                    "deployment", _KW, annotation=Any, default=Depends(deployment_provider)
                )
            ]
        )

    async def __call__(self, deployment: Any) -> Callable[[Any], StreamingRun]:
        """The run builder for this request's deployment."""
        return lambda payload: self.build(deployment, payload)

    def build(self, deployment: Any, payload: Any) -> StreamingRun:
        """A new run of ``deployment`` for the validated input ``payload``."""
        if isinstance(payload, RunRequest):
            inputs: Any = payload.inputs
            parameters: dict[str, Any] = dict(payload.parameters)
            if payload.task_name:
                parameters["task_name"] = payload.task_name
        else:
            inputs, parameters = payload, {}
        keep = self.include_inputs and isinstance(payload, RunRequest)
        try:
            source = as_deployment(deployment).open_run(inputs, parameters)
        except DeploymentError as exc:  # refused before any run exists: nothing is held
            raise HTTPException(
                422 if exc.code == "invalid_input" else 502,
                detail={"error": exc.code, "message": exc.message, "retryable": exc.retryable},
            ) from exc
        return StreamingRun(
            source,
            run_id=new_run_id(),
            inputs=inputs if keep else None,
            include_inputs=self.include_inputs,
            keep_alive=self.keep_alive,
            timeout=self.timeout,
            retry=self.retry,
        )


class StreamRouter(APIRouter):
    """The `APIRouter` made by `create_router`, with handles for tests and extensions.

    Attributes:
        deployment_provider: the deployment dependency (override it with a fake).
        run_provider: the dependency giving the run builder.
        manager: the `RunManager` driving this router's runs.
        store: the run store.
        admission: the router's limits and quotas.
    """

    deployment_provider: DeploymentProvider
    run_provider: RunProvider
    manager: RunManager
    store: RunStore
    admission: Admission


def _check_timing(on_disconnect: str, reconnect_grace: float, retry: int | None) -> None:
    """A client that obeys ``retry:`` must find its run still there when it comes back."""
    if on_disconnect != "cancel" or retry is None or reconnect_grace == 0:
        return  # 0 is the explicit choice to cancel at once (attached runs cannot resume)
    if reconnect_grace * 1000 <= retry:
        raise ValueError(
            f"reconnect_grace ({reconnect_grace} s) must be longer than the retry delay "
            f"({retry} ms): a client that waits the retry delay would find its run cancelled"
        )


def _rate_limiter(
    rate_limit: Any, storage: str, scope: str | None, trust_forwarded_for: bool, fail_open: bool
) -> Any:
    """A ``RateLimit`` from a string, a `SlowAPILimit` from ``(limiter, limits)``."""
    if isinstance(rate_limit, tuple):
        from ._slowapi import SlowAPILimit

        limiter, limits = rate_limit
        return SlowAPILimit(limiter, limits, scope=scope or "ikstream")
    if type(rate_limit).__name__ == "Limiter" and type(rate_limit).__module__.startswith("slowapi"):
        raise ValueError('give the limits with the slowapi Limiter: (limiter, "10/minute")')
    if rate_limit is None or not isinstance(rate_limit, str):
        return rate_limit
    from .ratelimit import RateLimit

    return RateLimit(
        rate_limit,
        storage_uri=storage,
        scope=scope,
        trust_forwarded_for=trust_forwarded_for,
        fail_open=fail_open,
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
    quotas: Quotas | None = None,
    keep_alive: float = 10.0,
    retry: int | None = 3000,
    include_inputs: bool = False,
    dependencies: Sequence[DependsParam] = (),
    tags: list[str] | None = None,
    store: RunStore | str | None = None,
    on_disconnect: DisconnectPolicy = "cancel",
    reconnect_grace: float = DEFAULT_RECONNECT_GRACE,
    drain_timeout: float = 5.0,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_body_size: int = 10 * 1024 * 1024,
    trust_forwarded_for: bool = False,
    name: str | None = None,
    browser_module: bool = True,
    named_events: bool = True,
    on_usage: OnUsage | None = None,
    metrics: Any = None,
) -> StreamRouter:
    """Make an `APIRouter` that runs ``deployment`` and streams its runs.

    Mount it with ``app.include_router(router, prefix="/api")``. Endpoints, under ``path``:

    - ``POST {path}/stream``: run and stream (SSE, or JSON lines for ``Accept:
      application/jsonl``); a request with ``Last-Event-ID`` of a known run resumes it,
      of an unknown run gets 404 (it never starts a new one).
    - ``GET {path}/stream?…``: the same for ``EventSource``; fields from the query string.
    - ``POST {path}``: run to the end; answers the final state as JSON.
    - ``POST {path}/runs``: start a run detached from any connection (201).
    - ``GET {path}/runs/{run_id}/events``: stream a run from the start or a cursor.
    - ``GET {path}/runs/{run_id}``: the run's latest state; ``DELETE``: cancel it.
    - ``GET {path}/ikstream.js``: the browser module; ``{path}/ikstream.d.ts``: its typings.

    Runs started by a stream are *attached*: with ``on_disconnect="cancel"`` they are
    cancelled once no reader has been connected for ``reconnect_grace`` seconds. Runs
    started by ``POST {path}/runs`` are *detached*: no reader's departure ends them.

    Args:
        deployment: a `Deployment`, or a function the `as_deployment` rules accept.
        path: path of the endpoints, e.g. ``"/generate-image"``. Default ``""``.
        request_model: the body model; default `RunRequest` (inputs, parameters, task_name).
        auth: a dependency giving the caller's ``Principal`` (e.g. ``JWTBearer``); None is open.
        rate_limit: ``"10/minute;200/day"``, a ``RateLimit``, or ``(limiter, "10/minute")``
            with an app's slowapi ``Limiter`` (its storage and key function are used, see
            ``fastapi_ikstream.ratelimit.SlowAPILimit``); per caller, counted by each request
            that starts a run (resumes have their own budget, `Quotas.resumes`).
        rate_limit_storage: ``limits`` storage URI, ``memory://`` or ``redis://…``.
        rate_limit_scope: the budget's name in a shared storage, the same in every worker.
            Default ``"ikstream:{name}"`` for a shared storage, unique to the router in memory.
        rate_limit_fail_open: when ``rate_limit_storage`` cannot be reached, let requests
            through uncounted (logged) instead of answering 503; applies to a ``rate_limit``
            string and the resume budget. Default False. (The concurrent-run cap is counted
            by the run store: without the store there is no run to start, so it answers 503.)
        max_concurrent_runs: unfinished runs one caller may have at once (429 beyond),
            counted by the run store, so shared by every worker on a shared store.
        quotas: per-caller quotas (unfinished runs, open streams, resumes). Default `Quotas()`.
        keep_alive: seconds of silence before a keep-alive is sent; 0 disables. Default 10.0.
        retry: SSE ``retry:`` in milliseconds on each connection's first event. Default 3000.
        include_inputs: send the inputs on the ``result`` event. Default False.
        dependencies: extra dependencies for every endpoint.
        tags: OpenAPI tags.
        store: a `RunStore`, a URI (``memory://``, ``redis://…``), or None for memory.
        on_disconnect: for attached runs: ``"cancel"`` (default) or ``"continue"`` (let it
            finish in the store).
        reconnect_grace: seconds an attached run waits for a reader to come back; must be
            longer than ``retry`` (a client waits that long before reconnecting, then adds
            its own jitter), or 0 to cancel an attached run as soon as its reader leaves (it
            cannot be resumed then). Default 30.0.
        drain_timeout: seconds runs may take to finish at shutdown. Default 5.0.
        timeout: seconds a deployment may run. Default 3600.0.
        max_body_size: bytes a request body may have (413 beyond). Default 10 MiB.
        trust_forwarded_for: key anonymous callers on ``X-Forwarded-For`` (behind a trusted
            proxy only).
        name: operation id prefix and summary name. Default from ``path``.
        browser_module: serve ``{path}/ikstream.js`` and ``{path}/ikstream.d.ts``. Default True.
        named_events: write each SSE event's ``event:`` line. False sends unnamed events
            (the kind stays in the JSON ``type``) for ``EventSource.onmessage`` code.
            Default True.
        on_usage: called (awaited if async) with one ``fastapi_ikstream.usage.UsageRecord``
            per run this worker ran, once its run has ended, however it ended. Default None.
        metrics: a ``fastapi_ikstream.metrics.PrometheusMetrics`` to report runs, streams,
            events, bytes, resumes and refusals to. Default None.

    Returns:
        A `StreamRouter` (an `APIRouter`).

    Raises:
        TypeError: ``deployment`` is not a deployment.
        ValueError: ``reconnect_grace`` is above 0 but not longer than ``retry`` with
            ``on_disconnect="cancel"``; an unparsable limit.
    """
    _check_timing(on_disconnect, reconnect_grace, retry)
    label = name or (path.strip("/").replace("/", "_").replace("-", "_") or "run")
    run_store = make_store(store) if store is not None else MemoryRunStore()
    observer = None
    if on_usage is not None or metrics is not None:
        observer = RunObserver(label, on_usage=on_usage, metrics=metrics, store=run_store)
    manager = RunManager(
        run_store,
        on_disconnect=on_disconnect,
        reconnect_grace=reconnect_grace,
        drain_timeout=drain_timeout,
        observer=observer,
    )
    shared = not rate_limit_storage.startswith("memory://")
    scope = rate_limit_scope or (f"ikstream:{label}" if shared else None)
    admission = Admission(
        rate_limit=_rate_limiter(
            rate_limit, rate_limit_storage, scope, trust_forwarded_for, rate_limit_fail_open
        ),
        fail_open=rate_limit_fail_open,
        quotas=quotas or Quotas(),
        max_concurrent_runs=max_concurrent_runs,
        scope=scope,
        storage_uri=rate_limit_storage,
        trust_forwarded_for=trust_forwarded_for,
    )
    core = RouterCore(
        manager, admission, keep_alive=keep_alive, retry=retry, named_events=named_events
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await manager.ensure_started()
        try:
            yield
        finally:
            await manager.aclose()
            # the limits this router made hold Redis connections: close them
            await admission.aclose(own_rate_limit=isinstance(rate_limit, str))

    router = StreamRouter(
        tags=list(tags) if tags else None,
        dependencies=list(dependencies),
        lifespan=lifespan,
        route_class=body_limited_route(
            max_body_size, observer.rejected if observer is not None else None
        ),
        responses=ERROR_RESPONSES,
    )
    router.deployment_provider = DeploymentProvider(as_deployment(deployment))
    router.run_provider = RunProvider(
        router.deployment_provider,
        include_inputs=include_inputs,
        timeout=timeout,
        keep_alive=keep_alive,
        retry=retry,
    )
    router.manager, router.store, router.admission = manager, run_store, admission
    principal_dep = auth if auth is not None else _anonymous
    model: type[BaseModel] = request_model or RunRequest
    reserved = {"inputs", "task_name", "last_event_id", getattr(auth, "query_param", None)}
    stream_doc = stream_responses(named_events=named_events)
    _add_run_routes(router, core, path, label, model, principal_dep, reserved, stream_doc)
    _add_run_id_routes(router, core, path, label, principal_dep, stream_doc)
    if browser_module:
        _add_browser_module(router, path, label)
    return router


async def _anonymous() -> Any:
    return None


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
    router: StreamRouter,
    core: RouterCore,
    path: str,
    label: str,
    model: type[BaseModel],
    principal_dep: Callable[..., Any],
    reserved: set[Any],
    stream_doc: dict[int | str, dict[str, Any]],
) -> None:
    """``{path}/stream`` (POST and GET), ``{path}`` and ``{path}/runs``."""
    Principal = Annotated[Any, Depends(principal_dep)]
    Runs = Annotated[MakeRun, Depends(router.run_provider)]
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
    summary = f"Run {label} and stream its events"
    for endpoint, method, note, suffix in (
        (stream_post, "POST", "", ""),
        (stream_get, "GET", " (for EventSource)", "_get"),
    ):
        router.add_api_route(
            f"{path}/stream",
            endpoint,
            methods=[method],
            summary=summary + note,
            operation_id=f"{label}_stream{suffix}",
            response_class=EventStreamResponse,
            responses=stream_doc,
        )
    router.add_api_route(
        path or "/",
        run_to_end,
        methods=["POST"],
        summary=f"Run {label} to the end",
        operation_id=f"{label}_run",
        response_model=RunState,
        response_model_exclude_none=True,
        responses=_RUN_TO_END_RESPONSES,
    )
    router.add_api_route(
        f"{path}/runs",
        start_detached,
        methods=["POST"],
        summary=f"Start a {label} run detached from any connection",
        operation_id=f"{label}_start",
        status_code=201,
        response_model=RunCreated,
    )


_RUN_TO_END_RESPONSES: dict[int | str, dict[str, Any]] = {
    502: {"model": RunState, "description": "The run failed (the `failed` state)."},
    504: {"model": RunState, "description": "The run timed out (`failed`, code `timeout`)."},
    409: {"model": RunState, "description": "The run was cancelled."},
}

RunIdPath = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$")]


def _add_run_id_routes(
    router: StreamRouter,
    core: RouterCore,
    path: str,
    label: str,
    principal_dep: Callable[..., Any],
    stream_doc: dict[int | str, dict[str, Any]],
) -> None:
    """``{path}/runs/{run_id}/events``, ``GET`` and ``DELETE {path}/runs/{run_id}``."""
    Principal = Annotated[Any, Depends(principal_dep)]

    async def run_events(
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
        return await core.events(request, run_id, raw, after_seq, principal, media_type)

    async def run_state(run_id: RunIdPath, principal: Principal) -> RunSnapshot:
        return await core.state(run_id, principal)

    async def cancel_run(run_id: RunIdPath, principal: Principal) -> JSONResponse:
        return await core.cancel(run_id, principal)

    router.add_api_route(
        f"{path}/runs/{{run_id}}/events",
        run_events,
        methods=["GET"],
        summary=f"Stream a {label} run's events, from the start or from Last-Event-ID",
        operation_id=f"{label}_events",
        response_class=EventStreamResponse,
        responses={
            **stream_doc,
            204: {"description": "The run has ended: stop reconnecting."},
            404: ERROR_RESPONSES[404],
        },
    )
    router.add_api_route(
        f"{path}/runs/{{run_id}}",
        run_state,
        methods=["GET"],
        summary=f"The latest state of a {label} run",
        operation_id=f"{label}_state",
        response_model=RunSnapshot,
        response_model_exclude_none=True,
        responses={404: ERROR_RESPONSES[404]},
    )
    router.add_api_route(
        f"{path}/runs/{{run_id}}",
        cancel_run,
        methods=["DELETE"],
        summary=f"Cancel a {label} run",
        operation_id=f"{label}_cancel",
        status_code=202,
        response_model=RunSnapshot,
        response_model_exclude_none=True,
        responses={
            200: {"model": RunSnapshot, "description": "The run had ended: nothing to cancel."},
            404: ERROR_RESPONSES[404],
        },
    )


def _add_browser_module(router: StreamRouter, path: str, label: str) -> None:
    async def browser_js() -> FileResponse:
        return FileResponse(
            _STATIC, media_type="text/javascript", headers={"Cache-Control": "public, max-age=3600"}
        )

    router.add_api_route(
        f"{path}/ikstream.js",
        browser_js,
        methods=["GET"],
        summary="The browser module (an ES module)",
        operation_id=f"{label}_browser_module",
        response_class=FileResponse,
        include_in_schema=False,
    )

    async def browser_typings() -> FileResponse:
        return FileResponse(
            _TYPINGS,
            media_type="application/typescript",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    router.add_api_route(
        f"{path}/ikstream.d.ts",
        browser_typings,
        methods=["GET"],
        response_class=FileResponse,
        include_in_schema=False,
    )
