"""The async client: `AsyncRunStream`, `aconnect_states` and the ``process_*`` helpers."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from typing import Any

import anyio
import httpx
import httpx_sse

from .._models import RunState
from ._core import (
    DEFAULT_TIMEOUT,
    OnProgress,
    RawEvent,
    StreamCore,
    StreamOptions,
    connect_error,
    stream_arguments,
)
from ._errors import StreamTimeoutError
from ._results import Results
from ._tracker import StateTracker, StreamKind

__all__ = [
    "AsyncRunStream",
    "aconnect_states",
    "process_json_stream",
    "process_streaming_response",
]


class _ActivityStream(httpx.AsyncByteStream):
    """The decoded body of a response; raises `StreamTimeoutError` after a silence."""

    def __init__(self, response: httpx.Response, timeout: float | None) -> None:
        self._response = response
        self._timeout = timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._response.aiter_bytes().__aiter__()
        while True:
            try:
                with anyio.fail_after(self._timeout):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise StreamTimeoutError(self._timeout) from None
            yield chunk


class AsyncRunStream(StreamCore[httpx.AsyncClient]):
    """An open run stream (async); made by `aconnect_states` or the `process_*` helpers.

    Its arguments are those of `StreamCore`, with an ``httpx.AsyncClient`` as ``client``.

    Attributes:
        response: the current HTTP response (a new one after each reconnect).
        reconnects: how many times the stream was resumed.
    """

    async def check(self) -> None:
        """Check the first answer: a 2xx event stream.

        Raises:
            StreamHTTPError: a non-2xx status (the body is read for the error).
            StreamProtocolError: not ``text/event-stream`` nor JSON lines.
        """
        await self._check()

    async def aiter_states(self) -> AsyncGenerator[RunState, None]:
        """Yield every run state, ``run`` first and ``done`` last, across reconnects.

        Raises:
            StreamHTTPError: a non-2xx answer before the stream.
            StreamTimeoutError: nothing arrived for ``timeout`` seconds.
            StreamConnectionError: the connection dropped and could not be resumed.
            RunFailedError: after yielding ``failed`` (and ``done``), when ``raise_on_error``.
            RunCancelledError: likewise after ``cancelled``.
            StreamConsumedError: the states were read already.
        """
        async with contextlib.aclosing(self._states()) as states:
            async for state in states:
                yield state

    async def aread_results(self, on_progress: OnProgress | None = None) -> Results:
        """Read the states to the end (calling ``on_progress``) and return the results.

        Raises:
            RunFailedError: the run failed.
            RunCancelledError: the run was cancelled.
            StreamError: as `aiter_states`.
        """
        async with contextlib.aclosing(self.aiter_states()) as states:
            async for state in states:
                if on_progress is not None:
                    outcome = on_progress(state)
                    if inspect.isawaitable(outcome):
                        await outcome
        return self.results()

    async def aclose(self) -> None:
        """Close the response and the client this stream opened for reconnects."""
        await self._close()

    # -- the I/O primitives of `StreamCore` ----------------------------------------------

    async def _read_body(self, response: httpx.Response) -> None:
        await response.aread()

    async def _close_response(self, response: httpx.Response) -> None:
        await response.aclose()

    async def _send(self, request: httpx.Request) -> httpx.Response:
        if self._client is None:
            self._client = self._own_client = httpx.AsyncClient()
        return await self._client.send(request, stream=True)

    async def _sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    async def _close_client(self) -> None:
        if self._own_client is not None:
            await self._own_client.aclose()
            self._own_client = None

    async def _raw_events(
        self, response: httpx.Response, kind: str
    ) -> AsyncGenerator[RawEvent, None]:
        body = httpx.Response(
            response.status_code,
            headers={"content-type": response.headers.get("content-type", "")},
            stream=_ActivityStream(response, self.timeout),
        )
        if kind == "sse":
            async with contextlib.aclosing(httpx_sse.EventSource(body).aiter_sse()) as events:
                async for sse in events:
                    yield sse
        else:
            async for line in body.aiter_lines():
                yield line


@contextlib.asynccontextmanager
async def aconnect_states(  # noqa: PLR0913 - public API: keyword-only options
    client: httpx.AsyncClient,
    method: str,
    url: str | httpx.URL,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_reconnects: int = 3,
    max_retry_delay: float = 5.0,
    jsonl: bool = False,
    raise_on_error: bool = True,
    **kwargs: Any,
) -> AsyncIterator[AsyncRunStream]:
    """Send a request and open its run stream, like ``httpx_sse.aconnect_sse``.

    Example::

        async with aconnect_states(http, "POST", url, json=body) as stream:
            async for state in stream.aiter_states():
                print(state.type, state.progress)
        results = stream.results()

    Args:
        client: the client that sends the request (and the reconnects).
        method: the HTTP method, e.g. ``"POST"``.
        url: the stream endpoint.
        timeout: seconds of silence before `StreamTimeoutError` (also the request's httpx
            read timeout); None waits forever. Default 15.0.
        max_reconnects: reconnects in a row without a new event before giving up. Default 3.
        max_retry_delay: cap, in seconds, on the server's ``retry:`` delay. Default 5.0.
        jsonl: ask for JSON lines instead of SSE (``Accept: application/jsonl``). Default False.
        raise_on_error: `AsyncRunStream.aiter_states` raises on ``failed`` / ``cancelled``.
            Default True.
        **kwargs: passed to ``client.stream`` (``json``, ``headers``, ``params`` …).

    Yields:
        The open `AsyncRunStream`.

    Raises:
        StreamHTTPError: a non-2xx answer (raised on entering).
        StreamConnectionError: the server could not be reached.
        StreamTimeoutError: the server did not answer in time.
    """
    arguments = stream_arguments(client, timeout, jsonl, kwargs)
    options = StreamOptions(timeout, max_reconnects, max_retry_delay, raise_on_error)
    async with contextlib.AsyncExitStack() as stack:
        try:
            response = await stack.enter_async_context(client.stream(method, url, **arguments))
        except httpx.TransportError as exc:
            raise connect_error(exc, url) from exc
        stream = AsyncRunStream.opened(response, client, options)
        stack.push_async_callback(stream.aclose)
        await stream.check()
        yield stream


async def _process_async(
    source: Any,
    on_progress: OnProgress | None,
    kind: StreamKind | None,
    client: httpx.AsyncClient | None,
    options: StreamOptions,
) -> Results:
    async with contextlib.AsyncExitStack() as stack:
        if isinstance(source, httpx.Response):
            response = source
        else:
            try:
                response = await stack.enter_async_context(source)
            except httpx.TransportError as exc:
                raise connect_error(exc) from exc
        stream = AsyncRunStream.opened(response, client, options, kind)
        stack.push_async_callback(stream.aclose)
        return await stream.aread_results(on_progress)


async def process_streaming_response(  # noqa: PLR0913 - public API: keyword-only options
    source: contextlib.AbstractAsyncContextManager[httpx.Response] | httpx.Response,
    on_progress: OnProgress | None = None,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_reconnects: int = 3,
    max_retry_delay: float = 5.0,
    client: httpx.AsyncClient | None = None,
) -> Results:
    """Read a run's stream to its end and return its results (as ``processStreamingResponse``).

    Example::

        results = await process_streaming_response(
            http.stream("POST", url, json=body), on_progress=lambda s: print(s.eta)
        )

    Args:
        source: ``http.stream(...)`` (not yet entered) or an open streaming ``httpx.Response``
            (SSE or JSON lines, told apart by its content type).
        on_progress: called (and awaited if async) with every state, in order.
        timeout: seconds of silence before `StreamTimeoutError`; None waits forever.
            Default 15.0.
        max_reconnects: reconnects in a row without a new event before giving up. Default 3.
        max_retry_delay: cap, in seconds, on the server's ``retry:`` delay. Default 5.0.
        client: sends the reconnects; default: a new ``httpx.AsyncClient`` when needed
            (the request's headers, e.g. ``Authorization``, are sent again as they were).

    Returns:
        The `Results` of the ``result`` state.

    Raises:
        RunFailedError: the run ended ``failed`` (``.state`` carries the error).
        RunCancelledError: the run ended ``cancelled``.
        StreamHTTPError: a non-2xx answer before the stream (``status_code``, ``body``).
        StreamTimeoutError: nothing arrived for ``timeout`` seconds.
        StreamConnectionError: the connection dropped and could not be resumed.
        StreamProtocolError: the answer is not a run's event stream.
    """
    options = StreamOptions(timeout, max_reconnects, max_retry_delay)
    return await _process_async(source, on_progress, None, client, options)


async def process_json_stream(  # noqa: PLR0913 - public API: keyword-only options
    source: contextlib.AbstractAsyncContextManager[httpx.Response]
    | httpx.Response
    | AsyncIterable[Any]
    | Iterable[Any],
    on_progress: OnProgress | None = None,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_reconnects: int = 3,
    max_retry_delay: float = 5.0,
    client: httpx.AsyncClient | None = None,
) -> Results:
    """Read a JSON-lines run stream, or any iterable of states, and return its results.

    Example::

        results = await process_json_stream(
            http.stream("POST", url, json=body, headers={"Accept": "application/jsonl"})
        )

    Args:
        source: ``http.stream(...)`` or an open response sending JSON lines (any content
            type other than ``text/event-stream`` is read as JSON lines); or an (async)
            iterable of states as `RunState`, dicts, or JSON strings or bytes.
        on_progress: called (and awaited if async) with every state, in order.
        timeout: seconds of silence before `StreamTimeoutError` (also between items of an
            async iterable); None waits forever. Default 15.0.
        max_reconnects: as in `process_streaming_response`. Default 3.
        max_retry_delay: as in `process_streaming_response`. Default 5.0.
        client: as in `process_streaming_response`.

    Returns:
        The `Results` of the ``result`` state.

    Raises:
        RunFailedError: the run ended ``failed``.
        RunCancelledError: the run ended ``cancelled``.
        StreamError: as `process_streaming_response`.
    """
    if isinstance(source, httpx.Response) or hasattr(source, "__aenter__"):
        options = StreamOptions(timeout, max_reconnects, max_retry_delay)
        return await _process_async(source, on_progress, "jsonl", client, options)
    tracker = StateTracker()
    if isinstance(source, AsyncIterable):
        items = source.__aiter__()
        while True:
            try:
                with anyio.fail_after(timeout):
                    item = await anext(items)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise StreamTimeoutError(timeout) from None
            await _feed_async(tracker, item, on_progress)
            if tracker.done:
                break
    else:
        for item in source:
            await _feed_async(tracker, item, on_progress)
            if tracker.done:
                break
    return tracker.results()


async def _feed_async(tracker: StateTracker, item: Any, on_progress: OnProgress | None) -> None:
    state = tracker.accept(item)
    if state is not None and on_progress is not None:
        outcome = on_progress(state)
        if inspect.isawaitable(outcome):
            await outcome
