"""`EventStreamResponse`: the ASGI response that streams a run's events.

It is the hot path, so it does little: per open stream, one task that waits for the
client's disconnect and nothing else; events are read from the run's subscription in
batches and written with one ``send`` per batch. It adds what Starlette's
``StreamingResponse`` lacks for event streams: keep-alives after a silence, the ``retry:``
hint on the first event, and a prompt, clean cancel when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ._exceptions import StoreError
from ._store import Subscription
from ._wire import JSONL_KEEPALIVE, SSE_KEEPALIVE, EncodedEvent, unnamed_events

__all__ = [
    "JSONL_MEDIA_TYPES",
    "SSE_MEDIA_TYPE",
    "EventStreamResponse",
    "StreamHandle",
    "negotiate_media_type",
]

SSE_MEDIA_TYPE = "text/event-stream"
JSONL_MEDIA_TYPES = ("application/jsonl", "application/x-ndjson")

OnClose = Callable[[], Awaitable[None] | None]

SEND_BYTES = 64 * 1024
"""Bytes per ``send`` at most: a large event goes out in slices, each awaited, so a client
that does not read holds at most a slice beyond the server's transport buffer (uvicorn
waits for the transport to drain before a ``send`` returns)."""


async def _send_slices(send: Send, chunk: bytes) -> None:
    view = memoryview(chunk)
    for start in range(0, len(chunk), SEND_BYTES):
        body = bytes(view[start : start + SEND_BYTES])
        await send({"type": "http.response.body", "body": body, "more_body": True})


def negotiate_media_type(accept: str | None) -> str | None:
    """Pick the stream's media type from an ``Accept`` header (RFC 9110 §12.5.1).

    Args:
        accept: the header's value; None or empty means anything.

    Returns:
        ``"text/event-stream"`` (also for ``*/*`` and ``text/*``), ``"application/jsonl"`` or
        ``"application/x-ndjson"``, whichever has the highest ``q``; None when the header
        names none of them (answer 406).
    """
    if not accept or not accept.strip():
        return SSE_MEDIA_TYPE
    best: tuple[float, int, str] | None = None
    for index, part in enumerate(accept.split(",")):
        fields = part.strip().split(";")
        name = fields[0].strip().lower()
        q = 1.0
        for param in fields[1:]:
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        if name in (SSE_MEDIA_TYPE, "*/*", "text/*"):
            chosen = SSE_MEDIA_TYPE
        elif name in JSONL_MEDIA_TYPES:
            chosen = name
        elif name == "application/*":
            chosen = JSONL_MEDIA_TYPES[0]
        else:
            continue
        rank = (q, -index, chosen)
        if best is None or rank[:2] > best[:2]:
            best = rank
    return None if best is None else best[2]


class EventStreamResponse(Response):
    """Streams a run's events as SSE (or JSON lines) from a `Subscription`.

    Headers: ``Content-Type: text/event-stream; charset=utf-8`` (or the JSON-lines type),
    ``Cache-Control: no-cache``, ``X-Accel-Buffering: no`` (nginx must not buffer), plus
    ``headers``. No compression is applied.

    Args:
        subscription: the reader, or a function that opens it when the response starts.
        media_type: ``"text/event-stream"`` (default), ``"application/jsonl"`` or
            ``"application/x-ndjson"``.
        keep_alive: seconds of silence before a keep-alive is written; 0 disables. Default 10.0.
        retry: reconnection delay in milliseconds, sent as ``retry:`` on the first event of
            the connection (SSE only); None sends none. Default 3000.
        headers: extra response headers.
        on_close: called (and awaited if it returns an awaitable) when the stream ends, the
            client disconnects, or the server stops it.
        background: run after a stream that ended normally.
        status_code: default 200.
        registry: a set the open stream's `StreamHandle` is kept in while it streams, so a
            server that shuts down can close it (see `StreamHandle.stop`).
        named_events: write each SSE event's ``event:`` line. False sends unnamed events
            (the kind stays in the JSON ``type``), which ``EventSource.onmessage`` receives.
            Default True.
        on_sent: called as ``on_sent(events, nbytes)`` after each write of events (not of
            keep-alives), for metering. Default None.
    """

    def __init__(  # noqa: PLR0913 - public constructor: keyword-only options
        self,
        subscription: Subscription | Callable[[], Subscription],
        *,
        media_type: str = SSE_MEDIA_TYPE,
        keep_alive: float = 10.0,
        retry: int | None = 3000,
        headers: Mapping[str, str] | None = None,
        on_close: OnClose | None = None,
        background: BackgroundTask | None = None,
        status_code: int = 200,
        registry: set[StreamHandle] | None = None,
        named_events: bool = True,
        on_sent: Callable[[int, int], None] | None = None,
    ) -> None:
        self._subscription = subscription
        self.status_code = status_code
        self.media_type = media_type
        self.retry = retry if media_type == SSE_MEDIA_TYPE else None
        self.keep_alive = keep_alive
        self.named_events = named_events
        # the hooks: called when the stream ends, after each write, and kept in while open
        self.on_close, self.on_sent, self.registry = on_close, on_sent, registry
        self.background = background
        self.body = b""
        self.init_headers(
            {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})}
        )
        # init_headers adds a content-length of 0 for an empty body: a stream has none.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream until ``done``, a disconnect, or cancellation."""
        subscription = self._open_subscription()
        task = asyncio.current_task()
        assert task is not None
        state = StreamHandle(task)
        if self.registry is not None:
            self.registry.add(state)
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, task, state))
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            await self._stream(subscription, send)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            if self.background is not None:
                await self.background()
        except asyncio.CancelledError:
            if not (state.disconnected or state.stopping):
                raise
            task.uncancel()
            if state.stopping and not state.disconnected:
                await self._send_hint(send)
        except StoreError:
            # The store failed under the stream (Redis is away): end it with the delay as a
            # lone ``retry:`` line, so the client reconnects and resumes from Last-Event-ID.
            await self._send_hint(send)
        except OSError:  # the transport broke while writing: the client is gone
            state.disconnected = True
        finally:
            state.closing = True
            watcher.cancel()
            if self.registry is not None:
                self.registry.discard(state)
            await _close(subscription, self.on_close)

    def _open_subscription(self) -> Subscription:
        if isinstance(self._subscription, Subscription):
            return self._subscription
        return self._subscription()

    async def _stream(self, subscription: Subscription, send: Send) -> None:
        """Write the subscription's batches, a keep-alive after each silence, until its end."""
        jsonl = self.media_type != SSE_MEDIA_TYPE
        keepalive = JSONL_KEEPALIVE if jsonl else SSE_KEEPALIVE
        timeout = self.keep_alive if self.keep_alive > 0 else None
        retry = self.retry
        named = self.named_events or jsonl
        while (batch := await subscription.next_batch(timeout)) is not None:
            events: Sequence[EncodedEvent] = batch if named else unnamed_events(batch)
            if not events:
                chunk = keepalive
            elif jsonl:
                chunk = b"".join([event.jsonl for event in events])
            elif retry is not None:
                first = events[0].sse_with_retry(retry)
                retry = None
                chunk = first + b"".join([event.sse for event in events[1:]])
            elif len(events) == 1:
                chunk = events[0].sse
            else:
                chunk = b"".join([event.sse for event in events])
            if len(chunk) <= SEND_BYTES:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            else:
                await _send_slices(send, chunk)
            if events and self.on_sent is not None:
                self.on_sent(len(events), len(chunk))

    async def _send_hint(self, send: Send) -> None:
        """End the body with `_hint`; a transport already broken is ignored."""
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": self._hint(), "more_body": False})

    def _hint(self) -> bytes:
        """The reconnection delay as a lone field line: no blank line, so no event."""
        return b"" if self.retry is None else b"retry: %d\n" % self.retry


class StreamHandle:
    """An open stream, as kept in a response's ``registry``."""

    __slots__ = ("closing", "disconnected", "stopping", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.closing = False
        self.disconnected = False
        self.stopping = False

    def stop(self) -> None:
        """End the stream now: the response closes cleanly and the client may reconnect.

        An SSE stream with a ``retry`` delay gets it as a last ``retry:`` line, with no blank
        line after it, so it dispatches no event.
        """
        if not self.closing and not self.stopping:
            self.stopping = True
            self.task.cancel()


async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any], state: StreamHandle) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            state.disconnected = True
            if not state.closing:
                task.cancel()
            return


async def _close(subscription: Subscription, on_close: OnClose | None) -> None:
    try:
        await subscription.aclose()
    finally:
        if on_close is not None:
            result = on_close()
            if inspect.isawaitable(result):
                await result
