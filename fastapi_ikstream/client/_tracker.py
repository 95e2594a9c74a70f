"""Reading events without I/O: event payloads to run states, and a response's stream kind."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import httpx
import httpx_sse
from pydantic import ValidationError

from .._exceptions import RunCancelledError, RunFailedError
from .._models import EventType, RunState
from ._errors import StreamProtocolError, StreamResumeError
from ._results import Results

__all__ = [
    "JSONL",
    "SSE",
    "StateTracker",
    "StreamKind",
    "describe",
    "http_timeout",
    "read_timeout_of",
    "stream_kind",
]

StreamKind = Literal["sse", "jsonl"]

SSE = "text/event-stream"
JSONL = ("application/jsonl", "application/x-ndjson", "application/json-seq")
_FIRST_RETRY_DELAY = 1.0


class StateTracker:
    """Turns event payloads into run states: skips keep-alives and repeats, spots the end."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.last_seq = 0
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None
        self.terminal: RunState | None = None
        self.done = False

    def accept_sse(self, sse: httpx_sse.ServerSentEvent) -> RunState | None:
        if sse.retry is not None:
            self.retry_ms = sse.retry
        return self.accept_text(sse.data, sse.id or None)

    def accept_text(self, data: str, event_id: str | None = None) -> RunState | None:
        if not data.strip():
            return None
        try:
            payload = json.loads(data)
        except ValueError as exc:
            raise StreamProtocolError(f"an event's data is not JSON: {data[:80]!r}") from exc
        return self.accept(payload, event_id)

    def accept(self, item: Any, event_id: str | None = None) -> RunState | None:
        if isinstance(item, str | bytes):
            return self.accept_text(item.decode() if isinstance(item, bytes) else item, event_id)
        if isinstance(item, Mapping) and item.get("type") == "keepalive":
            return None
        try:
            state = item if isinstance(item, RunState) else RunState.model_validate(item)
        except ValidationError as exc:
            raise StreamProtocolError(f"an event is not a run state: {exc}") from exc
        if self.run_id is None:
            self.run_id = state.run_id
        elif state.run_id != self.run_id:
            raise StreamResumeError(
                f"the server sent run {state.run_id} instead of resuming run {self.run_id}",
                last_event_id=self.last_event_id,
            )
        if state.seq <= self.last_seq:
            return None
        self.last_seq = state.seq
        self.last_event_id = event_id or state.event_id
        if state.type in (EventType.RESULT, EventType.FAILED, EventType.CANCELLED):
            self.terminal = state
        elif state.type is EventType.DONE:
            self.done = True
        return state

    def retry_delay(self, cap: float) -> float:
        delay = _FIRST_RETRY_DELAY if self.retry_ms is None else self.retry_ms / 1000
        return max(0.0, min(delay, cap))

    def raise_terminal(self) -> None:
        state = self.terminal
        if state is not None and state.type is EventType.FAILED:
            raise RunFailedError(state)
        if state is not None and state.type is EventType.CANCELLED:
            raise RunCancelledError(state)

    def results(self) -> Results:
        self.raise_terminal()
        if self.terminal is None:
            raise StreamProtocolError("the stream ended without a result")
        return Results(self.terminal)


def stream_kind(response: httpx.Response, default: Literal["sse", "jsonl"] | None) -> str:
    media = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media == SSE:
        return "sse"
    if media in JSONL:
        return "jsonl"
    if default is not None and response.status_code != 204:
        return default
    raise StreamProtocolError(
        f"expected an event stream ({SSE} or application/jsonl), got HTTP "
        f"{response.status_code} {media or 'without a content type'}"
    )


def read_timeout_of(response: httpx.Response) -> float | None:
    timeouts = response.request.extensions.get("timeout") or {}
    read = timeouts.get("read")
    return float(read) if read is not None else None


def http_timeout(base: httpx.Timeout | Mapping[str, Any], read: float | None) -> httpx.Timeout:
    if isinstance(base, Mapping):
        base = httpx.Timeout(**base) if base else httpx.Timeout(10.0)
    return httpx.Timeout(connect=base.connect, read=read, write=base.write, pool=base.pool)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
