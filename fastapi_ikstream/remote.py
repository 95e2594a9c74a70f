"""Another streaming API as a deployment: `RemoteDeployment` (extra ``remote``).

`RemoteDeployment` sends each run's request to an upstream endpoint that answers Server-Sent
Events (parsed by ``httpx-sse``) or JSON lines, and turns the upstream's events into the
run's states. Out of the box the upstream is another fastapi-ikstream server, so servers
chain (edge → region → GPU host); an `EventMapping` reads other formats (`INFERENCE_SH`,
`FAL`, or your own ``map_event``).

What happens when things go wrong:

| upstream                                               | run ends                         |
|--------------------------------------------------------|----------------------------------|
| connection refused, DNS failure                        | ``failed``, ``upstream_unreachable`` |
| answers 4xx or 5xx to the request                      | ``failed``, ``upstream_error``   |
| sends nothing (not even a keep-alive) for ``timeout`` s | ``failed``, ``upstream_timeout`` |
| connection drops (or closes before a terminal event)   | resumed with ``Last-Event-ID``   |
| ... and cannot be resumed ``max_reconnects`` times     | ``failed``, ``upstream_incomplete`` |
| sends ``failed``                                       | ``failed``, the upstream's code  |
| sends ``cancelled`` on its own                         | ``failed``, ``upstream_cancelled`` |

A resumed connection sends the last event id the upstream gave (its own ids); events the
upstream sends again are skipped by id, so the run's states are neither lost nor repeated.
When our run is cancelled (client gone, ``DELETE``, shutdown) or fails while the upstream's
run goes on, the upstream stream is closed and the upstream's cancel is called where it has
one (a fastapi-ikstream upstream: ``DELETE {base}/runs/{run_id}``). The upstream's run id is
read from the ``X-Run-Id`` response header or the events (a mapping's ``run_id``).

Example::

    from fastapi_ikstream import create_router
    from fastapi_ikstream.remote import RemoteDeployment

    gpu = RemoteDeployment("http://gpu-host:8000/api/generate/stream",
                           headers={"Authorization": "Bearer …"})
    app.include_router(create_router(gpu, path="/generate"), prefix="/api")
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from . import _remote_formats
from ._exceptions import (
    UpstreamError,
    UpstreamIncompleteError,
    UpstreamTimeoutError,
)
from ._remote_formats import FAL as FAL
from ._remote_formats import IKSTREAM as IKSTREAM
from ._remote_formats import INFERENCE_SH as INFERENCE_SH
from ._remote_formats import EventMapping as EventMapping
from ._remote_formats import MapEvent as MapEvent
from ._remote_formats import OnClose as OnClose
from ._remote_formats import UpstreamEvent as UpstreamEvent
from ._remote_formats import fal_close as fal_close
from ._remote_formats import fal_event as fal_event
from ._remote_formats import ikstream_event as ikstream_event
from ._remote_formats import inference_sh_event as inference_sh_event
from ._run import RunSource
from ._upstream import Dropped, UpstreamCursor, upstream_events

# the mapping names are the formats module's, re-exported here where users import them
__all__ = ["RemoteDeployment", "default_body"]
__all__ += _remote_formats.__all__

logger = logging.getLogger("fastapi_ikstream")

BodyBuilder = Callable[[Any, Mapping[str, Any]], Any]


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The default TLS context of httpx, made once (loading the CA bundle takes 74 ms here)."""
    return httpx.create_ssl_context()


def default_body(inputs: Any, parameters: Mapping[str, Any]) -> Any:
    """The request body for a fastapi-ikstream upstream: what the downstream request had.

    Args:
        inputs: the run's inputs (a request model instance is sent as its JSON).
        parameters: the run's parameters (``task_name`` goes back to the top level).

    Returns:
        ``{"inputs": [...], "parameters": {...}, "task_name": ...}`` as JSON-ready values.
    """
    if isinstance(inputs, BaseModel):
        return inputs.model_dump(mode="json")
    params = dict(parameters)
    task_name = params.pop("task_name", None)
    body: dict[str, Any] = {
        "inputs": to_jsonable_python(inputs if inputs is not None else []),
        "parameters": to_jsonable_python(params),
    }
    if task_name is not None:
        body["task_name"] = task_name
    return body


class RemoteDeployment:
    """A deployment that runs each request on an upstream streaming API.

    Example::

        RemoteDeployment("http://region:8000/api/job/stream")            # fastapi-ikstream
        RemoteDeployment("https://api.example/run", map_event=INFERENCE_SH,
                         body=lambda inputs, params: {"app": "x/y", "input": params},
                         cancel_url="https://api.example/tasks/{run_id}/cancel",
                         cancel_method="POST")

    Args:
        url: the upstream endpoint that answers the stream, e.g. a fastapi-ikstream router's
            ``…/stream``.
        method: the request's HTTP method. Default ``"POST"``.
        headers: headers for every upstream request (e.g. ``Authorization``). Default none.
        map_event: an `EventMapping`, or a plain ``map_event`` function; None (default) reads
            a fastapi-ikstream upstream (`IKSTREAM`). A mapped update may carry ``usage``
            (the upstream's own figures) for this run's usage record. A fastapi-ikstream
            upstream does not send its usage (it is billing data, kept off the wire): its
            own ``on_usage`` reports it.
        body: ``fn(inputs, parameters)`` giving the request's JSON body. Default
            `default_body`. None is sent as no body for ``GET``.
        cancel_url: the upstream's cancel endpoint, with ``{run_id}`` in it. Default: for a
            fastapi-ikstream ``…/stream`` url, ``…/runs/{run_id}``; otherwise none.
        cancel_method: the cancel request's method. Default ``"DELETE"``.
        run_id_header: the response header naming the upstream's run id. Default ``X-Run-Id``.
        timeout: seconds the upstream may stay silent (a keep-alive counts) before the run
            ends ``failed`` with ``upstream_timeout``; also the connect timeout. Default 15.0.
        max_reconnects: reconnects in a row (without an event between) before the run ends
            ``failed`` with ``upstream_incomplete``. Default 5.
        reconnect_delay: seconds before the first reconnect, doubling each time in a row,
            at most 5 s. Default 0.25.
        cancel_timeout: seconds the upstream cancel request may take. Default 2.0.
        client: an ``httpx.AsyncClient`` to share, for its connection pool (its base settings
            apply); default: one per run, closed at its end (all share one TLS context).
        name: a name for logs, documentation and usage records. Default ``"remote"``.
    """

    def __init__(  # noqa: PLR0913 - public constructor: keyword-only options
        self,
        url: str,
        *,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        map_event: EventMapping | MapEvent | None = None,
        body: BodyBuilder | None = default_body,
        cancel_url: str | None = None,
        cancel_method: str = "DELETE",
        run_id_header: str = "X-Run-Id",
        timeout: float = 15.0,
        max_reconnects: int = 5,
        reconnect_delay: float = 0.25,
        cancel_timeout: float = 2.0,
        client: httpx.AsyncClient | None = None,
        name: str = "remote",
    ) -> None:
        self.url = url
        self.method = method.upper()
        self.headers = dict(headers or {})
        if map_event is None:
            map_event = IKSTREAM
        self.mapping = map_event if isinstance(map_event, EventMapping) else EventMapping(map_event)
        self.body = body
        if cancel_url is None and self.mapping is IKSTREAM:
            base = url.split("?", 1)[0]
            if base.endswith("/stream"):
                cancel_url = base.removesuffix("/stream") + "/runs/{run_id}"
        self.cancel_url = cancel_url
        self.cancel_method = cancel_method.upper()
        self.run_id_header = run_id_header
        self.timeout = timeout
        self.max_reconnects = max_reconnects
        self.reconnect_delay = reconnect_delay
        self.cancel_timeout = cancel_timeout
        self.client = client
        self.name = name

    def open_run(self, inputs: Any, parameters: Mapping[str, Any]) -> RunSource:
        """See `fastapi_ikstream.Deployment.open_run`: an async iterable of updates."""
        payload = None if self.body is None else self.body(inputs, parameters)
        return self._stream(payload)

    async def _stream(self, payload: Any) -> AsyncIterator[dict[str, Any]]:
        cursor = UpstreamCursor()
        client = self.client or httpx.AsyncClient(verify=_tls_context())
        try:
            async with contextlib.aclosing(self._follow(client, payload, cursor)) as updates:
                async for update in updates:
                    yield update
        except BaseException:  # cancelled, timed out, cut for good, or the mapping raised
            if not cursor.ended:
                await self._cancel_upstream(client, cursor)
            raise
        finally:
            if self.client is None:
                await client.aclose()

    def _request_headers(self, cursor: UpstreamCursor, resuming: bool) -> dict[str, str]:
        headers = {"Accept": self.mapping.accept, "Cache-Control": "no-store", **self.headers}
        if resuming:
            last = cursor.last_id
            if last is None and cursor.run_id is not None and self.mapping.resume_id is not None:
                last = self.mapping.resume_id(cursor.run_id)
            if last is not None:
                headers["Last-Event-ID"] = last
        return headers

    def _resumable(self, cursor: UpstreamCursor) -> bool:
        return cursor.last_id is not None or (
            cursor.run_id is not None and self.mapping.resume_id is not None
        )

    async def _follow(
        self, client: httpx.AsyncClient, payload: Any, cursor: UpstreamCursor
    ) -> AsyncGenerator[dict[str, Any], None]:
        failures = 0
        while True:
            resuming = failures > 0
            if resuming:
                await asyncio.sleep(min(self.reconnect_delay * 2 ** (failures - 1), 5.0))
                cursor.replaying = True
            received = cursor.received
            connection = self._connection(client, payload, cursor, resuming)
            try:
                async with contextlib.aclosing(connection) as updates:
                    async for update in updates:
                        yield update
                if cursor.ended:
                    return
                reason = "the upstream closed the stream before the run ended"
            except Dropped as exc:
                reason = str(exc)
            except httpx.TimeoutException:
                raise UpstreamTimeoutError(self.timeout) from None
            except httpx.TransportError as exc:
                if not cursor.connected:
                    code = "upstream_unreachable" if isinstance(exc, httpx.ConnectError) else None
                    raise UpstreamError(
                        "Could not reach the upstream.", code=code or "upstream_error"
                    ) from None
                reason = f"{type(exc).__name__}: {exc}"
            failures = 1 if cursor.received > received else failures + 1
            logger.info("upstream stream of %s dropped (%s)", cursor.run_id or "a run", reason)
            if not self._resumable(cursor) or failures > self.max_reconnects:
                raise UpstreamIncompleteError()

    async def _connection(
        self, client: httpx.AsyncClient, payload: Any, cursor: UpstreamCursor, resuming: bool
    ) -> AsyncGenerator[dict[str, Any], None]:
        """One upstream connection: check the answer, then map its events."""
        async with client.stream(
            self.method,
            self.url,
            json=payload,
            headers=self._request_headers(cursor, resuming),
            timeout=httpx.Timeout(self.timeout),
        ) as response:
            await self._check(client, response, cursor, resuming)
            async for event in upstream_events(response):
                if not cursor.receive(event):
                    continue  # sent again on resuming: seen already
                update = cursor.accept(self.mapping.map_event(event))
                if update:
                    yield update
                if cursor.ended:
                    return
            if self.mapping.on_close is not None:
                update = cursor.accept(self.mapping.on_close(cursor.last_event))
                if update:
                    yield update

    async def _check(
        self,
        client: httpx.AsyncClient,
        response: httpx.Response,
        cursor: UpstreamCursor,
        resuming: bool,
    ) -> None:
        status = response.status_code
        cursor.connected = True
        if status >= 400 or status == 204:
            await response.aread()
            logger.info("upstream answered %s: %.200s", status, response.text)
            if not resuming:
                raise UpstreamError(f"The upstream answered HTTP {status}.", status_code=status)
            if status >= 500 or status == 429:
                raise Dropped(f"HTTP {status}")
            raise UpstreamIncompleteError(f"The upstream could not resume the run (HTTP {status}).")
        run_id = response.headers.get(self.run_id_header)
        if run_id is None:
            return
        if cursor.run_id is None:
            cursor.run_id = run_id
        elif run_id != cursor.run_id:  # it started a new run instead: stop that one
            await self._cancel_upstream(client, UpstreamCursor(run_id=run_id))
            raise UpstreamIncompleteError("The upstream started a new run instead of resuming.")

    async def _cancel_upstream(self, client: httpx.AsyncClient, cursor: UpstreamCursor) -> None:
        if cursor.run_id is None or not self.cancel_url:
            return
        url = self.cancel_url.format(run_id=quote(cursor.run_id, safe=""))
        try:
            async with asyncio.timeout(self.cancel_timeout):
                response = await client.request(self.cancel_method, url, headers=self.headers)
            logger.info("upstream run %s: cancel answered %s", cursor.run_id, response.status_code)
        except Exception as exc:  # best effort: the upstream may be gone
            logger.info("upstream run %s: cancel failed (%s)", cursor.run_id, exc)
