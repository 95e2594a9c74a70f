"""What the async and sync streams share: options, bookkeeping, the read and reconnect loops.

The loops are written once, as coroutines over a handful of I/O primitives (read a body,
close a response, send a request, sleep, iterate a connection's events). `AsyncRunStream`
implements the primitives with awaits. `RunStream` implements them with blocking calls, so
its coroutines never suspend, and `drive` / `drive_iter` (in `_drive`) run them to the end
without an event loop. The helpers' options (`StreamOptions`) and their request set-up
(`stream_arguments`) are shared too: the async and sync modules hold only the I/O.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeAlias, TypeVar

import httpx
import httpx_sse

from .._exceptions import StreamConsumedError
from .._models import RunState
from ._errors import (
    StreamConnectionError,
    StreamError,
    StreamHTTPError,
    StreamResumeError,
    StreamTimeoutError,
    StreamTimeoutWarning,
)
from ._results import Results
from ._tracker import (
    JSONL,
    SSE,
    StateTracker,
    StreamKind,
    describe,
    http_timeout,
    read_timeout_of,
    stream_kind,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "OnProgress",
    "StreamCore",
    "StreamOptions",
    "connect_error",
    "prepare_headers",
    "stream_arguments",
]

ClientT = TypeVar("ClientT", httpx.AsyncClient, httpx.Client)

DEFAULT_TIMEOUT = 15.0
"""Seconds of silence (not a byte, keep-alives included) before `StreamTimeoutError`."""

OnProgress: TypeAlias = Callable[[RunState], Any]
"""Called with every `RunState` in order, ``run`` first and ``done`` last; the async
helpers await it when it returns an awaitable."""

RawEvent: TypeAlias = httpx_sse.ServerSentEvent | str
"""One item of a connection: a Server-Sent Event, or a JSON line."""


def connect_error(exc: httpx.TransportError, url: object = None) -> StreamError:
    """The error for a request that could not be sent (no answer, or none in time)."""
    if url is None:
        try:
            url = exc.request.url
        except RuntimeError:
            url = "the server"
    if isinstance(exc, httpx.TimeoutException):
        return StreamTimeoutError(None, f"{url} did not answer in time: {describe(exc)}")
    return StreamConnectionError(f"could not reach {url}: {describe(exc)}")


def prepare_headers(kwargs: dict[str, Any], jsonl: bool) -> httpx.Headers:
    """Take ``headers`` out of ``kwargs``, adding the stream's ``Accept`` and no-store."""
    headers = httpx.Headers(kwargs.pop("headers", None))
    headers.setdefault("Accept", JSONL[0] if jsonl else SSE)
    headers.setdefault("Cache-Control", "no-store")
    return headers


def stream_arguments(
    client: httpx.AsyncClient | httpx.Client, timeout: float | None, jsonl: bool, kwargs: Any
) -> dict[str, Any]:
    """The keyword arguments of ``client.stream`` that open a run stream.

    They are the caller's ``kwargs``, with the stream's headers (`prepare_headers`) and a
    read timeout of ``timeout``.
    """
    headers = prepare_headers(kwargs, jsonl)
    return {**kwargs, "headers": headers, "timeout": http_timeout(client.timeout, timeout)}


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """The options every helper hands to the stream it opens (see `StreamCore`)."""

    timeout: float | None = DEFAULT_TIMEOUT
    max_reconnects: int = 3
    max_retry_delay: float = 5.0
    raise_on_error: bool = True


class StreamCore(Generic[ClientT]):
    """The shared part of `AsyncRunStream` and `RunStream` (see the module docstring).

    Args:
        response: the open streaming response.
        client: sends the reconnects; default: a client made when one is needed (and
            closed with the stream).
        timeout: seconds of silence before `StreamTimeoutError`; None waits forever.
            Default 15.0.
        max_reconnects: reconnects in a row without a new event before giving up. Default 3.
        max_retry_delay: cap, in seconds, on the server's ``retry:`` delay. Default 5.0.
        raise_on_error: reading the states raises on ``failed`` / ``cancelled``. Default True.
        default_kind: the kind (``"sse"`` or ``"jsonl"``) of a response whose content type
            names neither; None refuses such a response. Default None.
    """

    def __init__(  # noqa: PLR0913 - public constructor (of both streams): keyword-only options
        self,
        response: httpx.Response,
        *,
        client: ClientT | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_reconnects: int = 3,
        max_retry_delay: float = 5.0,
        raise_on_error: bool = True,
        default_kind: StreamKind | None = None,
    ) -> None:
        self.response = response
        self.timeout = timeout
        self.max_reconnects = max_reconnects
        self.max_retry_delay = max_retry_delay
        self.raise_on_error = raise_on_error
        self.reconnects = 0
        self._tracker = StateTracker()
        self._request = response.request
        self._default_kind = default_kind
        self._attempts = 0
        self._checked = False
        self._consumed = False
        self._client: ClientT | None = client
        self._own_client: ClientT | None = None
        self._warn_short_read(response)

    @classmethod
    def opened(
        cls,
        response: httpx.Response,
        client: ClientT | None,
        options: StreamOptions,
        default_kind: StreamKind | None = None,
    ) -> Self:
        """The stream of ``response`` with a helper's ``options``."""
        return cls(
            response,
            client=client,
            timeout=options.timeout,
            max_reconnects=options.max_reconnects,
            max_retry_delay=options.max_retry_delay,
            raise_on_error=options.raise_on_error,
            default_kind=default_kind,
        )

    # -- the I/O primitives --------------------------------------------------------------

    async def _read_body(self, response: httpx.Response) -> None:
        raise NotImplementedError

    async def _close_response(self, response: httpx.Response) -> None:
        raise NotImplementedError

    async def _send(self, request: httpx.Request) -> httpx.Response:
        raise NotImplementedError

    async def _sleep(self, seconds: float) -> None:
        raise NotImplementedError

    async def _close_client(self) -> None:
        raise NotImplementedError

    def _raw_events(self, response: httpx.Response, kind: str) -> AsyncGenerator[RawEvent, None]:
        raise NotImplementedError

    # -- public state ----------------------------------------------------------------------

    @property
    def run_id(self) -> str | None:
        """The run's id, once its first event has arrived."""
        return self._tracker.run_id

    @property
    def last_event_id(self) -> str | None:
        """The id of the last event received (``"{run_id}:{seq}"``), sent on a reconnect."""
        return self._tracker.last_event_id

    @property
    def terminal_state(self) -> RunState | None:
        """The ``result``, ``failed`` or ``cancelled`` state, once received."""
        return self._tracker.terminal

    def results(self) -> Results:
        """The results, after the states have been read.

        Raises:
            RunFailedError: the run failed.
            RunCancelledError: the run was cancelled.
            StreamProtocolError: no result was received.
        """
        return self._tracker.results()

    def _warn_short_read(self, response: httpx.Response) -> None:
        read = read_timeout_of(response)
        if read is not None and self.timeout is not None and read < self.timeout:
            warnings.warn(
                f"the response's read timeout ({read:g} s) is shorter than the stream's "
                f"inactivity timeout ({self.timeout:g} s): silences longer than the server's "
                "keep-alive interval will break the stream; use e.g. "
                "httpx.Timeout(10.0, read=30.0), or aconnect_states / connect_states",
                StreamTimeoutWarning,
                stacklevel=3,
            )

    def _start_iteration(self) -> None:
        if self._consumed:
            raise StreamConsumedError("the stream's states were read already")
        self._consumed = True

    def _accepted(self, state: RunState | None) -> RunState | None:
        if state is not None:
            self._attempts = 0
        return state

    def _timeout_or_drop(self, exc: httpx.TimeoutException, response: httpx.Response) -> str:
        """A read timeout shorter than ours counts as a dropped connection; else raise."""
        read = read_timeout_of(response)
        if (
            isinstance(exc, httpx.ReadTimeout)
            and read is not None
            and (self.timeout is None or read < self.timeout)
        ):
            return f"{describe(exc)} after {read:g} s, the response's read timeout"
        raise StreamTimeoutError(read if read is not None else self.timeout) from exc

    def _next_attempt(self, reason: str) -> float:
        self._attempts += 1
        if self._attempts > self.max_reconnects:
            raise StreamConnectionError(
                f"the connection dropped ({reason}); gave up after {self.max_reconnects} "
                "reconnects",
                last_event_id=self.last_event_id,
            )
        return self._tracker.retry_delay(self.max_retry_delay)

    def _resend_request(self) -> httpx.Request:
        old = self._request
        headers = httpx.Headers(old.headers)
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        try:
            content = old.content
        except httpx.RequestNotRead as exc:
            raise StreamResumeError(
                "the request body was streamed and cannot be sent again",
                last_event_id=self.last_event_id,
            ) from exc
        timeouts = http_timeout(old.extensions.get("timeout") or {}, self.timeout)
        return httpx.Request(
            old.method,
            old.url,
            headers=headers,
            content=content,
            extensions={"timeout": timeouts.as_dict()},
        )

    def _reconnect_verdict(self, response: httpx.Response) -> bool | str:
        """True: stream from it; False: the run is over; a str: retry (why); or raise."""
        status = response.status_code
        if status == 204:
            if self._tracker.terminal is not None:
                return False
            raise StreamResumeError(
                f"the server has no more events for run {self.run_id} (204) before its end",
                last_event_id=self.last_event_id,
            )
        if status >= 500:
            return f"HTTP {status}"
        if not response.is_success:
            raise StreamResumeError(
                f"the server could not resume run {self.run_id} after "
                f"{self.last_event_id}: HTTP {status}",
                last_event_id=self.last_event_id,
            ) from StreamHTTPError.from_response(response)
        stream_kind(response, self._default_kind)
        self.reconnects += 1
        return True

    def _dropped(self, reason: str) -> str | None:
        """None when the run is over (its terminal state arrived); else ``reason``."""
        tracker = self._tracker
        return None if tracker.done or tracker.terminal is not None else reason

    def _finish(self) -> None:
        if self.raise_on_error:
            self._tracker.raise_terminal()

    # -- the loops -------------------------------------------------------------------------

    async def _check(self) -> None:
        if self._checked:
            return
        if not self.response.is_success:
            await self._read_body(self.response)
            raise StreamHTTPError.from_response(self.response)
        stream_kind(self.response, self._default_kind)
        self._checked = True

    async def _connection_states(self, response: httpx.Response) -> AsyncGenerator[RunState, None]:
        tracker = self._tracker
        kind = stream_kind(response, self._default_kind)
        async with contextlib.aclosing(self._raw_events(response, kind)) as events:
            async for event in events:
                if isinstance(event, httpx_sse.ServerSentEvent):
                    state = tracker.accept_sse(event)
                else:
                    state = tracker.accept_text(event)
                if (state := self._accepted(state)) is not None:
                    yield state
                    if tracker.done:
                        return

    async def _states(self) -> AsyncGenerator[RunState, None]:
        self._start_iteration()
        await self._check()
        while True:
            response = self.response
            try:
                async with contextlib.aclosing(self._connection_states(response)) as states:
                    async for state in states:
                        yield state
                reason = self._dropped("the stream ended before the run did")
            except httpx.TimeoutException as exc:
                reason = self._dropped(self._timeout_or_drop(exc, response))
            except httpx.TransportError as exc:
                reason = self._dropped(describe(exc))
            if reason is None or not await self._reconnect(reason):
                break
        await self._close()
        self._finish()

    async def _reconnect(self, reason: str) -> bool:
        await self._close_response(self.response)
        while True:
            await self._sleep(self._next_attempt(reason))
            try:
                response = await self._send(self._resend_request())
            except httpx.TransportError as exc:
                reason = describe(exc)
                continue
            try:
                if response.status_code >= 400:
                    await self._read_body(response)
                verdict = self._reconnect_verdict(response)
            except BaseException:
                await self._close_response(response)
                raise
            if verdict is True:
                self.response = response
                return True
            await self._close_response(response)
            if verdict is False:
                return False
            reason = str(verdict)

    async def _close(self) -> None:
        await self._close_response(self.response)
        await self._close_client()
