"""The client's other reading forms: byte streams and fal-style listeners.

Re-exported from `fastapi_ikstream.client`; see there for the timeouts and the exceptions.

- `process_readable_stream` (and ``_sync``): a run's event stream as an iterator of bytes
  (a queue, a custom transport, a file), as the JavaScript ``processReadableStream`` utility.
- `stream_states`: a `StateStream` with fal's ``on("message" | "error" | "done", ...)``
  listeners, ``await stream.done()`` and ``async for`` (fal's ``FalStream`` form).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Literal, Self, TypeAlias

import httpx

from .._exceptions import StreamConsumedError
from .._models import RunState
from ._async import AsyncRunStream, aconnect_states
from ._core import DEFAULT_TIMEOUT, OnProgress
from ._results import Results
from ._sync import RunStream

__all__ = [
    "Listener",
    "StateStream",
    "StreamEvent",
    "process_readable_stream",
    "process_readable_stream_sync",
    "stream_states",
]

_PLACEHOLDER = httpx.Request("GET", "http://readable-stream.invalid/")
"""The request a byte stream's response is given; it is never sent (no reconnects)."""


class _AsyncChunks(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterable[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk

    async def aclose(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()


class _SyncChunks(httpx.SyncByteStream):
    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


def _chunks_response(chunks: _AsyncChunks | _SyncChunks, jsonl: bool) -> httpx.Response:
    """A response around bytes from anywhere, for the streams to read."""
    media_type = "application/jsonl" if jsonl else "text/event-stream"
    return httpx.Response(
        200, headers={"content-type": media_type}, stream=chunks, request=_PLACEHOLDER
    )


async def process_readable_stream(
    chunks: AsyncIterable[bytes],
    on_progress: OnProgress | None = None,
    *,
    jsonl: bool = False,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Results:
    """Read a run's event stream given as bytes and return its results.

    For bytes that do not come in an httpx response: a queue fed by another task, a
    WebSocket, a file. There is no reconnect (there is no request to send again).

    Example::

        results = await process_readable_stream(run.aiter_sse(), on_progress=print)

    Args:
        chunks: the stream's bytes, in chunks of any size (Server-Sent Events, or JSON
            lines with ``jsonl``).
        on_progress: called (and awaited if async) with every state, in order.
        jsonl: the bytes are JSON lines. Default False (SSE).
        timeout: seconds without a chunk before `StreamTimeoutError`; None waits forever.
            Default 15.0.

    Returns:
        The `Results` of the ``result`` state.

    Raises:
        RunFailedError: the run ended ``failed``.
        RunCancelledError: the run ended ``cancelled``.
        StreamTimeoutError: no chunk for ``timeout`` seconds.
        StreamConnectionError: the bytes ended before the run did.
        StreamProtocolError: an event is not a run state.
    """
    stream = AsyncRunStream(
        _chunks_response(_AsyncChunks(chunks), jsonl), timeout=timeout, max_reconnects=0
    )
    try:
        return await stream.aread_results(on_progress)
    finally:
        await stream.aclose()


def process_readable_stream_sync(
    chunks: Iterable[bytes],
    on_progress: OnProgress | None = None,
    *,
    jsonl: bool = False,
) -> Results:
    """Sync twin of `process_readable_stream` (no inactivity timeout: ``chunks`` has its own).

    Args:
        chunks: the stream's bytes (SSE, or JSON lines with ``jsonl``).
        on_progress: called with every state, in order.
        jsonl: the bytes are JSON lines. Default False (SSE).

    Returns:
        The `Results` of the ``result`` state.

    Raises:
        RunFailedError: the run ended ``failed``.
        RunCancelledError: the run ended ``cancelled``.
        StreamConnectionError: the bytes ended before the run did.
        StreamProtocolError: an event is not a run state.
    """
    stream = RunStream(_chunks_response(_SyncChunks(chunks), jsonl), timeout=None, max_reconnects=0)
    try:
        return stream.read_results(on_progress)
    finally:
        stream.close()


StreamEvent: TypeAlias = Literal["message", "data", "state", "error", "done"]
"""What a `StateStream` listener listens to: every state (``message``, or its aliases
``data`` and ``state``), the error the stream ended with, or the end (the `Results`)."""

Listener: TypeAlias = Callable[[Any], Any]
"""A `StateStream` listener; it is awaited when it returns an awaitable."""

_ALIASES: dict[str, tuple[str, ...]] = {"message": ("message", "data", "state")}


class StateStream:
    """A run's stream in fal's ``FalStream`` form: listeners, ``done()``, ``async for``.

    It reads when it is awaited or iterated, not before, so listeners added first miss no
    state. Iterate it once; `done` may be awaited any number of times (after a loop, it
    returns at once).

    Example::

        stream = stream_states(http, "POST", url, json={"inputs": [image]})
        stream.on("message", lambda state: print(state.status, state.progress))
        results = await stream.done()

    Args:
        open_stream: opens the stream, e.g. ``lambda: aconnect_states(http, "POST", url)``.
    """

    def __init__(
        self, open_stream: Callable[[], contextlib.AbstractAsyncContextManager[AsyncRunStream]]
    ) -> None:
        self._open = open_stream
        self._listeners: dict[str, list[Listener]] = {}
        self.states: list[RunState] = []
        """Every state received so far, in order."""
        self._started = False
        self._ended = False
        self._error: BaseException | None = None
        self._results: Results | None = None

    def on(self, type: StreamEvent, listener: Listener) -> Self:
        """Add a listener for every state, the error, or the end (see `StreamEvent`).

        Raises:
            ValueError: ``type`` is not a `StreamEvent`.
        """
        if type not in ("message", "data", "state", "error", "done"):
            raise ValueError(f"no such stream event: {type!r}")
        self._listeners.setdefault(type, []).append(listener)
        return self

    def off(self, type: StreamEvent, listener: Listener) -> Self:
        """Remove a listener added with `on` (nothing happens if it was not added)."""
        with contextlib.suppress(ValueError):
            self._listeners.get(type, []).remove(listener)
        return self

    async def _emit(self, type: str, value: Any) -> None:
        for name in _ALIASES.get(type, (type,)):
            for listener in list(self._listeners.get(name, ())):
                outcome = listener(value)
                if inspect.isawaitable(outcome):
                    await outcome

    def __aiter__(self) -> AsyncIterator[RunState]:
        """The states, ``run`` first and ``done`` last; a failed run raises after ``done``.

        Raises:
            StreamConsumedError: the stream was read already.
        """
        if self._started:
            raise StreamConsumedError("the stream's states were read already")
        self._started = True
        return self._read()

    async def _read(self) -> AsyncIterator[RunState]:
        try:
            async with self._open() as stream:
                async for state in stream.aiter_states():
                    self.states.append(state)
                    await self._emit("message", state)
                    yield state
                self._results = stream.results()
        except Exception as exc:
            self._ended, self._error = True, exc
            await self._emit("error", exc)
            raise
        except BaseException:  # closed early or cancelled: the run's end is unknown
            self._ended = True
            self._error = StreamConsumedError("the stream was closed before the run ended")
            raise
        self._ended = True
        await self._emit("done", self._results)

    async def done(self) -> Results:
        """Read to the end if no loop did (calling the listeners); return the results.

        Raises:
            RunFailedError: the run ended ``failed``; `RunCancelledError` if cancelled.
            StreamError: as `AsyncRunStream.aiter_states`.
            StreamConsumedError: a loop is reading the stream, or left it before the run's
                end.
        """
        if not self._started:
            async for _ in self:
                pass
        elif not self._ended:
            raise StreamConsumedError(
                "a loop is reading the stream, or left it before the run's end: "
                "await done() after the loop ends"
            )
        if self._error is not None:
            raise self._error
        assert self._results is not None
        return self._results


def stream_states(
    client: httpx.AsyncClient, method: str, url: str | httpx.URL, **kwargs: Any
) -> StateStream:
    """Make a `StateStream` for a request (sent when the stream is awaited or iterated).

    Example::

        async for state in stream_states(http, "POST", url, json=body):
            print(state.status)

    Args:
        client: the client that sends the request (and the reconnects).
        method: the HTTP method.
        url: the stream endpoint.
        **kwargs: passed to `aconnect_states` (``json``, ``headers``, ``timeout`` …).

    Returns:
        The stream, not started.
    """
    return StateStream(lambda: aconnect_states(client, method, url, **kwargs))
