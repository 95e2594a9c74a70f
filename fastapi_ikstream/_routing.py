"""`create_router`: one call turns a deployment into documented, streaming FastAPI endpoints.

The router is assembled from named parts, each in its own module:

- `_options` — the options, checked once (`RouterOptions`);
- `_providers` — the dependencies users override (`DeploymentProvider`, `RunProvider`);
- `_route` — the route class: 413 for large bodies, 405 with a complete ``Allow``;
- `_inputs` — where the input comes from (JSON body, or the query string for ``GET``);
- `_admission` — the limits checked after auth and validation (rate limit, quotas);
- `_runs` — the run lifecycle (`RunManager`);
- `_endpoints` — what each endpoint does (`RouterCore`);
- `_register` — the endpoints' declarations, whose parameters are what OpenAPI shows.

This module holds `create_router`, which checks the options, assembles the parts (store,
observer, manager, admission) into a `StreamRouter`, and has the routes registered on it.
"""

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from fastapi.params import Depends as DependsParam
from pydantic import BaseModel

from ._admission import Admission, Quotas
from ._deployments import as_deployment
from ._endpoints import RouterCore
from ._memory import MemoryRunStore
from ._observe import OnUsage, RunObserver
from ._openapi import ERROR_RESPONSES
from ._options import RouterOptions
from ._providers import DeploymentProvider, RunProvider
from ._register import register_routes
from ._route import body_limited_route
from ._run import DEFAULT_TIMEOUT
from ._runs import DEFAULT_RECONNECT_GRACE, DisconnectPolicy, RunManager
from ._store import RunStore
from ._stores import make_store

__all__ = ["DeploymentProvider", "RunProvider", "StreamRouter", "create_router"]


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


def create_router(  # noqa: PLR0913 - public API: keyword-only options
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
    options = RouterOptions(
        path=path,
        request_model=request_model,
        auth=auth,
        rate_limit=rate_limit,
        rate_limit_storage=rate_limit_storage,
        rate_limit_scope=rate_limit_scope,
        rate_limit_fail_open=rate_limit_fail_open,
        max_concurrent_runs=max_concurrent_runs,
        quotas=quotas,
        keep_alive=keep_alive,
        retry=retry,
        include_inputs=include_inputs,
        dependencies=dependencies,
        tags=tags,
        store=store,
        on_disconnect=on_disconnect,
        reconnect_grace=reconnect_grace,
        drain_timeout=drain_timeout,
        timeout=timeout,
        max_body_size=max_body_size,
        trust_forwarded_for=trust_forwarded_for,
        name=name,
        browser_module=browser_module,
        named_events=named_events,
        on_usage=on_usage,
        metrics=metrics,
    )
    options.check()
    parts = _Parts.assemble(options)
    router = parts.router(deployment, options)
    register_routes(router, parts.core, router.run_provider, options)
    return router


@dataclass(frozen=True)
class _Parts:
    """What a router is assembled from: its store, observer, manager, limits and endpoints."""

    store: RunStore
    observer: RunObserver | None
    manager: RunManager
    admission: Admission
    core: RouterCore

    @classmethod
    def assemble(cls, options: RouterOptions) -> "_Parts":
        """Make each part from ``options``, the store first (the others report to it)."""
        store = make_store(options.store) if options.store is not None else MemoryRunStore()
        observer = None
        if options.on_usage is not None or options.metrics is not None:
            observer = RunObserver(
                options.label, on_usage=options.on_usage, metrics=options.metrics, store=store
            )
        manager = RunManager(
            store,
            on_disconnect=options.on_disconnect,
            reconnect_grace=options.reconnect_grace,
            drain_timeout=options.drain_timeout,
            observer=observer,
        )
        quotas = options.quotas or Quotas()
        admission = Admission(
            rate_limit=options.rate_limiter(),
            quotas=quotas,
            max_concurrent_runs=options.max_concurrent_runs,
            resume_limit=options.resume_limiter(quotas),
            trust_forwarded_for=options.trust_forwarded_for,
        )
        core = RouterCore(
            manager,
            admission,
            keep_alive=options.keep_alive,
            retry=options.retry,
            named_events=options.named_events,
        )
        return cls(store, observer, manager, admission, core)

    def router(self, deployment: Any, options: RouterOptions) -> StreamRouter:
        """The `StreamRouter` over these parts, its lifespan starting and closing them."""
        manager, admission = self.manager, self.admission

        @contextlib.asynccontextmanager
        async def lifespan(_: Any) -> AsyncIterator[None]:
            await manager.ensure_started()
            try:
                yield
            finally:
                await manager.aclose()
                # the limits this router made hold Redis connections: close them
                await admission.aclose(own_rate_limit=options.owns_rate_limit)

        router = StreamRouter(
            tags=list(options.tags) if options.tags else None,
            dependencies=list(options.dependencies),
            lifespan=lifespan,
            route_class=body_limited_route(
                options.max_body_size, self.observer.rejected if self.observer is not None else None
            ),
            responses=ERROR_RESPONSES,
        )
        router.deployment_provider = DeploymentProvider(as_deployment(deployment))
        router.run_provider = RunProvider(
            router.deployment_provider,
            include_inputs=options.include_inputs,
            timeout=options.timeout,
            keep_alive=options.keep_alive,
            retry=options.retry,
        )
        router.manager, router.store, router.admission = manager, self.store, admission
        return router
