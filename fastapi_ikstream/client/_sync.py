"""The sync client: `RunStream`, `connect_states` and the ``*_sync`` helpers.

`RunStream` runs the loops of `StreamCore` with blocking I/O (see `_core`), so the sync
API behaves as the async one by construction.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Generator, Iterable, Iterator
from typing import Any

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
from ._drive import drive, drive_iter
from ._results import Results
from ._tracker import StateTracker, StreamKind

__all__ = [
    "RunStream",
    "connect_states",
    "process_json_stream_sync",
    "process_streaming_response_sync",
]


class RunStream(StreamCore[httpx.Client]):
    """An open run stream (sync); made by `connect_states` or the ``*_sync`` helpers.

    Its arguments are those of `StreamCore`, with an ``httpx.Client`` as ``client``. The
    inactivity timeout is enforced through httpx's read timeout, which requests sent by
    this module set to ``timeout``.

    Attributes:
        response: the current HTTP response (a new one after each reconnect).
        reconnects: how many times the stream was resumed.
    """

    def check(self) -> None:
        """Check the first answer: a 2xx event stream.

        Raises:
            StreamHTTPError: a non-2xx status (the body is read for the error).
            StreamProtocolError: not ``text/event-stream`` nor JSON lines.
        """
        drive(self._check())

    def iter_states(self) -> Generator[RunState, None, None]:
        """Yield every run state, ``run`` first and ``done`` last, across reconnects.

        Raises:
            StreamHTTPError: a non-2xx answer before the stream.
            StreamTimeoutError: nothing arrived for ``timeout`` seconds.
            StreamConnectionError: the connection dropped and could not be resumed.
            RunFailedError: after yielding ``failed`` (and ``done``), when ``raise_on_error``.
            RunCancelledError: likewise after ``cancelled``.
            StreamConsumedError: the states were read already.
        """
        return drive_iter(self._states())

    def read_results(self, on_progress: OnProgress | None = None) -> Results:
        """Read the states to the end (calling ``on_progress``) and return the results.

        Raises:
            RunFailedError: the run failed.
            RunCancelledError: the run was cancelled.
            StreamError: as `iter_states`.
        """
        with contextlib.closing(self.iter_states()) as states:
            for state in states:
                if on_progress is not None:
                    on_progress(state)
        return self.results()

    def close(self) -> None:
        """Close the response and the client this stream opened for reconnects."""
        drive(self._close())

    # -- the I/O primitives of `StreamCore`: blocking, so their coroutines never suspend --

    async def _read_body(self, response: httpx.Response) -> None:
        response.read()

    async def _close_response(self, response: httpx.Response) -> None:
        response.close()

    async def _send(self, request: httpx.Request) -> httpx.Response:
        if self._client is None:
            self._client = self._own_client = httpx.Client()
        return self._client.send(request, stream=True)

    async def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)  # noqa: ASYNC251 - a blocking primitive, run by `drive`

    async def _close_client(self) -> None:
        if self._own_client is not None:
            self._own_client.close()
            self._own_client = None

    async def _raw_events(
        self, response: httpx.Response, kind: str
    ) -> AsyncGenerator[RawEvent, None]:
        if kind == "sse":
            for sse in httpx_sse.EventSource(response).iter_sse():
                yield sse
        else:
            for line in response.iter_lines():
                yield line


@contextlib.contextmanager
def connect_states(  # noqa: PLR0913 - public API: keyword-only options
    client: httpx.Client,
    method: str,
    url: str | httpx.URL,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_reconnects: int = 3,
    max_retry_delay: float = 5.0,
    jsonl: bool = False,
    raise_on_error: bool = True,
    **kwargs: Any,
) -> Iterator[RunStream]:
    """Send a request and open its run stream (sync twin of `aconnect_states`).

    Example::

        with connect_states(http, "POST", url, json=body) as stream:
            for state in stream.iter_states():
                print(state.type, state.progress)

    Args:
        client: the client that sends the request (and the reconnects).
        method: the HTTP method.
        url: the stream endpoint.
        timeout: seconds of silence before `StreamTimeoutError` (the request's httpx read
            timeout); None waits forever. Default 15.0.
        max_reconnects: reconnects in a row without a new event before giving up. Default 3.
        max_retry_delay: cap, in seconds, on the server's ``retry:`` delay. Default 5.0.
        jsonl: ask for JSON lines instead of SSE. Default False.
        raise_on_error: `RunStream.iter_states` raises on ``failed`` / ``cancelled``.
            Default True.
        **kwargs: passed to ``client.stream``.

    Yields:
        The open `RunStream`.

    Raises:
        StreamHTTPError: a non-2xx answer (raised on entering).
        StreamConnectionError: the server could not be reached.
        StreamTimeoutError: the server did not answer in time.
    """
    arguments = stream_arguments(client, timeout, jsonl, kwargs)
    options = StreamOptions(timeout, max_reconnects, max_retry_delay, raise_on_error)
    with contextlib.ExitStack() as stack:
        try:
            response = stack.enter_context(client.stream(method, url, **arguments))
        except httpx.TransportError as exc:
            raise connect_error(exc, url) from exc
        stream = RunStream.opened(response, client, options)
        stack.callback(stream.close)
        stream.check()
        yield stream


def _process_sync(
    source: Any,
    on_progress: OnProgress | None,
    kind: StreamKind | None,
    client: httpx.Client | None,
    options: StreamOptions,
) -> Results:
    with contextlib.ExitStack() as stack:
        if isinstance(source, httpx.Response):
            response = source
        else:
            try:
                response = stack.enter_context(source)
            except httpx.TransportError as exc:
                raise connect_error(exc) from exc
        stream = RunStream.opened(response, client, options, kind)
        stack.callback(stream.close)
        return stream.read_results(on_progress)


def process_streaming_response_sync(  # noqa: PLR0913 - public API: keyword-only options
    source: contextlib.AbstractContextManager[httpx.Response] | httpx.Response,
    on_progress: OnProgress | None = None,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_reconnects: int = 3,
    max_retry_delay: float = 5.0,
    client: httpx.Client | None = None,
) -> Results:
    """Sync twin of `process_streaming_response`.

    Args:
        source: ``http.stream(...)`` of an ``httpx.Client`` or an open streaming response.
        on_progress: called with every state, in order.
        timeout: seconds of silence allowed; enforced by httpx's read timeout (set on the
            reconnects this function sends). Default 15.0.
        max_reconnects: reconnects in a row without a new event before giving up. Default 3.
        max_retry_delay: cap, in seconds, on the server's ``retry:`` delay. Default 5.0.
        client: sends the reconnects; default: a new ``httpx.Client`` when needed.

    Returns:
        The `Results` of the ``result`` state.

    Raises:
        RunFailedError: the run ended ``failed``.
        RunCancelledError: the run ended ``cancelled``.
        StreamError: as `process_streaming_response`.
    """
    options = StreamOptions(timeout, max_reconnects, max_retry_delay)
    return _process_sync(source, on_progress, None, client, options)


def process_json_stream_sync(  # noqa: PLR0913 - public API: keyword-only options
    source: contextlib.AbstractContextManager[httpx.Response] | httpx.Response | Iterable[Any],
    on_progress: OnProgress | None = None,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    max_reconnects: int = 3,
    max_retry_delay: float = 5.0,
    client: httpx.Client | None = None,
) -> Results:
    """Sync twin of `process_json_stream`.

    Args:
        source: ``http.stream(...)`` or an open response sending JSON lines, or an iterable
            of states (`RunState`, dicts, JSON strings or bytes).
        on_progress: called with every state, in order.
        timeout: as in `process_streaming_response_sync`. Default 15.0.
        max_reconnects: as in `process_streaming_response_sync`. Default 3.
        max_retry_delay: as in `process_streaming_response_sync`. Default 5.0.
        client: as in `process_streaming_response_sync`.

    Returns:
        The `Results` of the ``result`` state.

    Raises:
        RunFailedError: the run ended ``failed``.
        RunCancelledError: the run ended ``cancelled``.
        StreamError: as `process_streaming_response`.
    """
    if isinstance(source, httpx.Response) or hasattr(source, "__enter__"):
        options = StreamOptions(timeout, max_reconnects, max_retry_delay)
        return _process_sync(source, on_progress, "jsonl", client, options)
    tracker = StateTracker()
    for item in source:
        state = tracker.accept(item)
        if state is not None and on_progress is not None:
            on_progress(state)
        if tracker.done:
            break
    return tracker.results()
