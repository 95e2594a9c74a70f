"""What the router declares in OpenAPI: error bodies, stream item schemas, run records.

The stream endpoints are documented the way FastAPI's native SSE documents them (an
``itemSchema`` per OpenAPI 3.2 §4.14.4, "Special Considerations for Server-Sent Events"),
while the stream itself is served by `EventStreamResponse`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ._models import EventType, RunState, RunStatus

__all__ = ["ERROR_RESPONSES", "ErrorBody", "RunCreated", "RunSnapshot", "stream_responses"]


class ErrorBody(BaseModel):
    """The JSON body of every error answered before a stream starts."""

    detail: Any = Field(description="What went wrong: a message, or FastAPI's error list.")


class RunCreated(BaseModel):
    """The answer to ``POST {path}/runs``: the run's id and where to read or cancel it."""

    run_id: str
    events_url: str = Field(description="GET it for the run's events (SSE or JSON lines).")
    state_url: str = Field(description="GET it for the run's latest state.")
    cancel_url: str = Field(description="DELETE it to cancel the run.")


class RunSnapshot(BaseModel):
    """A run's latest known state."""

    run_id: str
    status: RunStatus
    last_seq: int = Field(description="Seq of the last event appended.")
    finished: bool = Field(description="True once `done` has been sent.")
    latest: RunState | None = Field(default=None, description="The latest event but `done`.")


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("The body could not be parsed (not JSON, or a bad Content-Length)."),
    401: _error("Missing or invalid credentials (`WWW-Authenticate` says why)."),
    403: _error("The credentials lack a required scope."),
    404: _error("No such run, or not the caller's."),
    406: _error("`Accept` allows none of the stream's media types."),
    413: _error("The request body is too large."),
    429: _error("Too many requests or runs at once (`Retry-After` says when to retry)."),
    503: _error("The server is shutting down, or the run store is full."),
}

_EVENTS_DOC = """Events, in order: `run` (first; carries `retry:`), then any of `progress`, `log`,
`partial`, then one of `result`, `failed` or `cancelled`, and `done` last. A resumed stream may
start with `reset` when the events asked for are no longer kept. Each SSE event has
`id: {run_id}:{seq}`, `event: {type}` and one `data:` line holding the run state as JSON.
Keep-alives are comment lines (`: keep-alive`); in JSON lines, `{"type":"keepalive"}`."""

_UNNAMED_DOC = """

This router sends unnamed events: no `event:` line, so `EventSource.onmessage` receives every
event; the kind is the JSON `type`."""


def stream_responses(*, named_events: bool = True) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entry for a stream endpoint: SSE and JSON lines with item schemas.

    Args:
        named_events: the SSE items have an ``event`` field; False documents unnamed
            events (no ``event:`` line; the kind is the JSON ``type``). Default True.
    """
    ref = {"$ref": "#/components/schemas/RunState"}
    sse_item: dict[str, Any] = {
        "type": "object",
        "required": ["data", "event", "id"] if named_events else ["data", "id"],
        "properties": {
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": ref,
            },
            "event": {"type": "string", "enum": [kind.value for kind in EventType]},
            "id": {"type": "string", "description": "`{run_id}:{seq}`"},
            "retry": {"type": "integer", "minimum": 0},
        },
    }
    if not named_events:
        del sse_item["properties"]["event"]
    return {
        200: {
            "description": _EVENTS_DOC if named_events else _EVENTS_DOC + _UNNAMED_DOC,
            "content": {
                "text/event-stream": {"itemSchema": sse_item},
                "application/jsonl": {"itemSchema": ref},
                "application/x-ndjson": {"itemSchema": ref},
            },
        },
    }
