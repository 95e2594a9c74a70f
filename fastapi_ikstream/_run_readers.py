"""The ways to read a `StreamingRun`: as states, as SSE or JSON-lines bytes, as a response.

The run itself (`_run`) only produces states into a sink; everything that frames them for
the wire or for HTTP lives here, and `StreamingRun`'s reading methods delegate to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.background import BackgroundTask

from ._log import RunLog
from ._memory import MemoryRunSubscription
from ._models import EventType, RunState
from ._response import EventStreamResponse, negotiate_media_type
from ._shutdown import on_shutdown_signal
from ._wire import JSONL_KEEPALIVE, SSE_KEEPALIVE, unnamed_events

if TYPE_CHECKING:
    from ._run import StreamingRun

__all__ = ["ResponseOptions", "encoded_stream", "run_response", "state_stream"]

_SHUTDOWN = "the server is shutting down"


def _text_sink(log: RunLog[str]) -> Callable[[RunState], None]:
    """A sink keeping each state's JSON in ``log``."""

    def sink(state: RunState) -> None:
        log.append(state.to_json(), state.seq, state.type)

    return sink


async def state_stream(run: StreamingRun) -> AsyncGenerator[RunState, None]:
    """Start ``run`` and yield its states; a reader that falls behind gets a ``reset``."""
    log: RunLog[RunState] = RunLog(run.max_events)
    task = run.start(lambda state: log.append(state, state.seq, state.type))
    cursor = 0
    try:
        while True:
            batch = log.read_after(cursor)
            if batch is None:  # fell behind the kept window
                first = log.first_seq
                yield RunState(
                    type=EventType.RESET, run_id=run.run_id, seq=first - 1, first_seq=first
                )
                cursor = first - 1
                continue
            if not batch:
                await log.wait(cursor, None)
                continue
            for state in batch:
                yield state
            cursor = batch[-1].seq
            if log.finished and cursor == log.last_seq:
                break
    finally:
        if not task.done():
            task.cancel()


async def encoded_stream(run: StreamingRun, jsonl: bool) -> AsyncGenerator[bytes, None]:
    """Start ``run`` and yield its events as SSE blocks (or JSON lines), keep-alives between."""
    log: RunLog[str] = RunLog(run.max_events)
    task = run.start(_text_sink(log))
    sub = MemoryRunSubscription(run.run_id, log, 0)
    try:
        first = True
        while (batch := await sub.next_batch(run.keep_alive or None)) is not None:
            if not batch:
                yield JSONL_KEEPALIVE if jsonl else SSE_KEEPALIVE
                continue
            for event in batch if run.named_events or jsonl else unnamed_events(batch):
                if jsonl:
                    yield event.jsonl
                elif first and run.retry is not None:
                    yield event.sse_with_retry(run.retry)
                else:
                    yield event.sse
                first = False
    finally:
        if not task.done():
            task.cancel()


@dataclass(frozen=True, slots=True)
class ResponseOptions:
    """What `StreamingRun.to_response` was called with (see there)."""

    keep_alive: float | None
    headers: Mapping[str, str] | None
    media_type: str
    accept: str | None
    background: BackgroundTask | None


def run_response(run: StreamingRun, options: ResponseOptions) -> EventStreamResponse:
    """The response streaming ``run``, which starts when the response does."""
    media_type = options.media_type
    if options.accept is not None:
        media_type = negotiate_media_type(options.accept) or media_type
    log: RunLog[str] = RunLog(run.max_events)
    started: list[asyncio.Task[None]] = []
    hooks: list[Callable[[], None]] = []

    def drain() -> None:  # SIGTERM: let the run finish within drain_timeout, then cancel
        loop = asyncio.get_running_loop()
        hooks.append(loop.call_later(run.drain_timeout, run.cancel, _SHUTDOWN).cancel)

    def open_subscription() -> MemoryRunSubscription:
        started.append(run.start(_text_sink(log)))
        hooks.append(on_shutdown_signal(drain))
        return MemoryRunSubscription(run.run_id, log, 0)

    def on_close() -> None:
        for unhook in hooks:
            unhook()
        for task in started:
            if not task.done():
                task.cancel()

    return EventStreamResponse(
        open_subscription,
        media_type=media_type,
        keep_alive=run.keep_alive if options.keep_alive is None else options.keep_alive,
        retry=run.retry,
        headers={**run.headers, **(options.headers or {})},
        on_close=on_close,
        background=options.background,
        named_events=run.named_events,
    )
