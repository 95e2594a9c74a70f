"""`StreamingRun`: a run that reports progress, turned into a typed stream of run states.

The Python counterpart of the JavaScript ``StreamingRun`` (``getAsyncGenerator``,
``getReadableStream``, ``getResponse``) and of ``runStream`` / ``toReadableStream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from ._exceptions import (
    DeploymentError,
    DeploymentTimeoutError,
    RunCancelledError,
    RunFailedError,
    StreamConsumedError,
)
from ._models import (
    EventType,
    RunError,
    RunState,
    RunStatus,
    status_from_state,
    upstream_id_of,
)
from ._run_readers import ResponseOptions, encoded_stream, run_response, state_stream
from ._updates import RunUsage, eta_of, logs_of, progress_of, results_of, trusted_state
from ._wire import check_sse_id

if TYPE_CHECKING:
    from starlette.background import BackgroundTask

    from ._response import EventStreamResponse

__all__ = ["DEFAULT_TIMEOUT", "OnProgress", "RunSource", "StreamingRun", "new_run_id"]

logger = logging.getLogger("fastapi_ikstream")
T = TypeVar("T")

DEFAULT_TIMEOUT = 3600.0
"""Seconds a deployment may run before it is ended with a ``failed`` state, code ``timeout``."""

OnProgress: TypeAlias = Callable[..., None]
"""The progress callback handed to a run function: call it with keyword arguments
(``ikclient``'s ``run_id, name, uuid, state, eta, results``, or any of ``status, progress,
logs, log, partial_output, usage``), or one dict or `RunState` of those fields. ``usage``
goes to the run's usage record only (`RunUsage`)."""

RunSource: TypeAlias = Callable[[OnProgress], Any] | AsyncIterable[Any]
"""A run function ``fn(on_progress) -> result`` (sync or async), or an async iterable of updates."""


def new_run_id() -> str:
    """A new unguessable run id: ``"r_"`` and 24 hex digits (96 random bits)."""
    return "r_" + secrets.token_hex(12)


class StreamingRun:
    """A run of a deployment, streamed as typed run states.

    Build it from a run function that takes ``on_progress`` (like ``ikclient``'s
    ``client.run(image, on_progress=on_progress)``), or from an async iterable of updates;
    then read it once, as `RunState` objects, SSE bytes, JSON-lines bytes, or a response.

    Example::

        run = StreamingRun(lambda on_progress: client.run(image, on_progress=on_progress))
        return run.to_response(keep_alive=10, headers={"X-Custom": "v"})

    Args:
        source: ``fn(on_progress)`` returning the results (or an awaitable of them), or an
            async iterable yielding updates (dicts, `RunState`, or results as the last item
            when it has a ``results`` key).
        run_id: the run's id; a new unguessable one by default.
        inputs: the run's inputs, sent on the ``result`` event when ``include_inputs``.
        include_inputs: send ``inputs`` on the ``result`` event. Default False.
        raise_on_error: `aiter_states`, `aiter_sse` and `aiter_jsonl` raise `RunFailedError`
            (or `RunCancelledError`) after yielding the terminal state and ``done``, so a
            consumer of the bytes sees the failure too. `to_response` is not affected: once
            the headers are sent, a failure can only travel as the ``failed`` event (which
            this package's clients raise). Default True.
        keep_alive: seconds of silence before a keep-alive is sent; 0 disables. Default 10.0.
        headers: extra response headers for `to_response`. Default none.
        timeout: seconds the deployment may run; then the run ends ``failed`` with code
            ``timeout``. Default 3600.0.
        retry: reconnection delay in milliseconds sent as SSE ``retry:`` on the first event.
            Default 3000.
        max_events: events buffered for a slow reader before it gets a ``reset``. Default 10,000.
        drain_timeout: seconds a run streamed by `to_response` may go on after SIGTERM or
            SIGINT before it is cancelled. Default 5.0.
        named_events: write the SSE ``event:`` line. False sends unnamed events (the kind
            stays in the JSON ``type``), so ``EventSource.onmessage`` gets every event.
            Default True.

    Raises:
        ValueError: ``run_id`` holds a CR, an LF or a NUL (it would break the SSE ``id:``).
    """

    def __init__(  # noqa: PLR0913 - public constructor: keyword-only options
        self,
        source: RunSource,
        *,
        run_id: str | None = None,
        inputs: Any = None,
        include_inputs: bool = False,
        raise_on_error: bool = True,
        keep_alive: float = 10.0,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: int | None = 3000,
        max_events: int = 10_000,
        drain_timeout: float = 5.0,
        named_events: bool = True,
    ) -> None:
        self.source = source
        self.run_id = check_sse_id(run_id, "run_id") if run_id else new_run_id()
        self.inputs = inputs
        self.include_inputs = include_inputs
        self.raise_on_error = raise_on_error
        self.keep_alive = keep_alive
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.retry = retry
        self.max_events = max_events
        self.drain_timeout = drain_timeout
        self.named_events = named_events
        self.usage = RunUsage(self.run_id)
        self._upstream_id: str | None = None
        self._seq = 0
        self._status = RunStatus.RECEIVED
        self._state: str | None = None
        self._eta: Any = None
        self._results: list[dict[str, Any]] | None = None
        self._result_sent = False
        self._terminal: RunState | None = None
        self._sink: Callable[[RunState], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._cancel_reason: str | None = None
        self._running = False
        self._consumed = False

    # -- producing -------------------------------------------------------------------------

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The task running the deployment, once started."""
        return self._task

    @property
    def terminal_state(self) -> RunState | None:
        """The ``result``, ``failed`` or ``cancelled`` state, once the run has ended."""
        return self._terminal

    def start(self, sink: Callable[[RunState], None]) -> asyncio.Task[None]:
        """Run the deployment in a new task, handing every state to ``sink`` in seq order.

        The sink is called synchronously and must not block. The last state is always
        ``done``. Used by the router to write into a run store; most users want
        `aiter_states`, `aiter_sse` or `to_response` instead.

        Raises:
            StreamConsumedError: the run was started or read already.
        """
        self._check_unread()
        self._consumed = True
        self._sink = sink
        self._task = asyncio.get_running_loop().create_task(self._drive())
        return self._task

    def cancel(self, reason: str = "cancelled") -> None:
        """Cancel the deployment: the run ends with ``cancelled`` (code ``cancelled``), ``done``."""
        if self._task is not None and not self._task.done():
            self._cancel_reason = reason
            if self._running:
                self._task.cancel()
            # else: a task cancelled before its first step would run no code at all and leave
            # the run without an end; `_drive` sees the reason as it starts and ends the run.

    def _emit(self, type_: EventType, **fields: Any) -> RunState:
        self._seq += 1
        if self._upstream_id is not None and "status" in fields:
            fields["upstream_id"] = self._upstream_id
        state = RunState(type=type_, run_id=self.run_id, seq=self._seq, **fields)
        assert self._sink is not None
        self._sink(state)
        return state

    def on_progress(self, *args: Any, **kwargs: Any) -> None:
        """The progress callback (see `OnProgress`); safe to call from the event loop only."""
        if args:
            first = args[0]
            update = first.model_dump(exclude_none=True) if isinstance(first, RunState) else first
            update = {**update, **kwargs}
        else:
            update = kwargs
        self._update(update)

    def _update(self, update: Mapping[str, Any]) -> None:
        if self._terminal is not None or self._sink is None:
            return
        if "usage" in update and not (update := self.usage.take(update)):
            return  # the deployment's usage only: nothing for readers
        state = update.get("state")
        status = update.get("status")
        self._upstream_id = upstream_id_of(update) or self._upstream_id
        new_status = RunStatus(status) if status is not None else status_from_state(state)
        if state is not None:
            self._state = str(state)
        if "eta" in update and update["eta"] is not None:
            self._eta = eta_of(update["eta"])
        results = results_of(update.get("results"))
        if new_status is RunStatus.FAILED:
            return  # the exception that follows says why
        if new_status is not None:
            self._status = new_status
        logs = logs_of(update)
        if results is not None:
            self._results = results
            self._send_result()
            return
        partial = update.get("partial_output")
        if partial is not None:
            kind = EventType.PARTIAL
        elif logs and state is None and status is None and "eta" not in update:
            kind = EventType.LOG
        else:
            kind = EventType.PROGRESS
        if kind is EventType.LOG:
            fields: dict[str, Any] = {"logs": logs}
        else:
            fields = {
                "status": self._status,
                "state": self._state,
                "eta": self._eta,
                "progress": progress_of(update.get("progress")),
                "logs": logs,
                "partial_output": partial,
            }
        self._emit_trusted(kind, fields)  # every value is validated or the package's own

    def _emit_trusted(self, type_: EventType, fields: dict[str, Any]) -> None:
        self._seq += 1
        if self._upstream_id is not None and "status" in fields:
            fields["upstream_id"] = self._upstream_id
        fields["type"] = type_
        fields["run_id"] = self.run_id
        fields["seq"] = self._seq
        assert self._sink is not None
        self._sink(trusted_state(fields))

    def _send_result(self) -> None:
        if self._result_sent:
            return
        self._result_sent = True
        self._status = RunStatus.COMPLETED
        self._terminal = self._emit(
            EventType.RESULT,
            status=RunStatus.COMPLETED,
            state=self._state if status_from_state(self._state) is RunStatus.COMPLETED else None,
            eta=(0, 0),
            results=self._results if self._results is not None else [],
            inputs=self.inputs if self.include_inputs else None,
        )

    def _fail(self, error: RunError, kind: EventType = EventType.FAILED) -> None:
        status = RunStatus.FAILED if kind is EventType.FAILED else RunStatus.CANCELLED
        self._status = status
        state = self._state if kind is EventType.FAILED and self._state == "FAILURE" else None
        self._terminal = self._emit(kind, status=status, state=state, eta=(0, 0), error=error)

    async def _call_source(self) -> None:
        source = self.source
        if isinstance(source, AsyncIterable):
            async for item in source:
                self.on_progress(item)
            return
        value = source(self.on_progress)
        if inspect.isawaitable(value):
            value = await value
        if not self._result_sent:
            results = results_of(value)
            if results is not None:
                self._results = results

    async def _drive(self) -> None:
        self._running = True
        self._emit(EventType.RUN, status=RunStatus.RECEIVED)
        if self._cancel_reason is not None:
            self._fail(RunError(code="cancelled", message=self._cancel_reason), EventType.CANCELLED)
            self._emit(EventType.DONE, status=self._status)
            return
        try:
            limit = asyncio.timeout(self.timeout)
            try:
                async with limit:
                    await self._call_source()
            except TimeoutError:
                if limit.expired():
                    raise DeploymentTimeoutError(self.timeout or 0) from None
                raise
            if self._terminal is None:
                self._send_result()
        except asyncio.CancelledError:
            reason = self._cancel_reason or "the client went away"
            if self._terminal is None:
                self._fail(RunError(code="cancelled", message=reason), EventType.CANCELLED)
            self._emit(EventType.DONE, status=self._status)
            if self._cancel_reason is None:
                raise
            return
        except DeploymentError as exc:
            logger.info("run %s failed: %s (%s)", self.run_id, exc.message, exc.code)
            self._fail(RunError(code=exc.code, message=exc.message, retryable=exc.retryable))
        except Exception:
            logger.exception("run %s: the deployment raised", self.run_id)
            self._fail(RunError(code="deployment_error", message="The deployment failed."))
        self._emit(EventType.DONE, status=self._status)

    # -- reading (the readers themselves are in `_run_readers`) -----------------------------

    def _check_unread(self) -> None:
        if self._consumed:
            raise StreamConsumedError(f"run {self.run_id} was already consumed")

    def _raise_if_failed(self) -> None:
        terminal = self._terminal
        if self.raise_on_error and terminal is not None:
            if terminal.type is EventType.FAILED:
                raise RunFailedError(terminal)
            if terminal.type is EventType.CANCELLED:
                raise RunCancelledError(terminal)

    async def _to_the_end(self, reader: AsyncGenerator[T, None]) -> AsyncIterator[T]:
        async with contextlib.aclosing(reader) as items:
            async for item in items:
                yield item
        self._raise_if_failed()

    def aiter_states(self) -> AsyncIterator[RunState]:
        """Run and yield every state, ``run`` first and ``done`` last.

        Raises:
            StreamConsumedError: the run was already read.
            RunFailedError: after yielding ``failed`` and ``done``, when ``raise_on_error``.
            RunCancelledError: after yielding ``cancelled`` and ``done``, when ``raise_on_error``.
        """
        return self._to_the_end(state_stream(self))

    def aiter_sse(self) -> AsyncIterator[bytes]:
        """Run and yield the stream as SSE bytes: one block per event, keep-alives between.

        Raises:
            StreamConsumedError: the run was already read.
            RunFailedError: after the ``failed`` and ``done`` blocks, when ``raise_on_error``.
            RunCancelledError: after the ``cancelled`` and ``done`` blocks, likewise.
        """
        return self._to_the_end(encoded_stream(self, jsonl=False))

    def aiter_jsonl(self) -> AsyncIterator[bytes]:
        """Run and yield the stream as JSON lines; keep-alive lines are ``{"type":"keepalive"}``.

        It raises as `aiter_sse` does, after the ``failed`` or ``cancelled`` line and ``done``.
        """
        return self._to_the_end(encoded_stream(self, jsonl=True))

    def to_response(
        self,
        *,
        keep_alive: float | None = None,
        headers: Mapping[str, str] | None = None,
        media_type: str = "text/event-stream",
        accept: str | None = None,
        background: BackgroundTask | None = None,
    ) -> EventStreamResponse:
        """A streaming response for any FastAPI or Starlette route.

        The deployment starts when the response starts. If the client disconnects, the
        deployment task is cancelled at once. When the server receives SIGTERM or SIGINT,
        the run gets ``drain_timeout`` seconds to finish; then it is cancelled, so the
        stream ends with ``cancelled`` and ``done`` and the server's shutdown can go on.

        Args:
            keep_alive: seconds between keep-alives; 0 disables. Default: the run's own.
            headers: extra headers, added to the run's own.
            media_type: ``"text/event-stream"`` (default) or ``"application/jsonl"``.
            accept: a request's ``Accept`` header; when given, it picks the media type.
            background: a task to run after the response is sent.

        Raises:
            StreamConsumedError: the run was already read.
        """
        self._check_unread()
        options = ResponseOptions(keep_alive, headers, media_type, accept, background)
        return run_response(self, options)
