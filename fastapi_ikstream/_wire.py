r"""The stream on the wire: Server-Sent Events and JSON lines.

SSE blocks are encoded exactly as FastAPI's ``fastapi.sse.format_sse_event`` encodes them
(field order ``event``, ``data``, ``id``, ``retry``; LF line ends; UTF-8 without BOM), by a
leaner function that a test proves byte-identical to it. Each block has exactly one
``data:`` line of compact JSON, so no block ever lacks data
(``docs/concepts/wire-format.md``, rule 2).

Keep-alives differ on purpose from FastAPI's ``": ping\n\n"``: ours is a comment line with
no blank line after it (``b": keep-alive\n"``). A comment followed by a blank line is a block
without data, which ``httpx-sse`` and ``@microsoft/fetch-event-source`` turn into an empty
event once an id has been seen; a lone comment line is folded into the next block and
ignored by every parser (HTML Living Standard, §9.2.6 "Interpreting an event stream").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Protocol

from ._models import RunState

if TYPE_CHECKING:
    from ._store import StoredEvent

__all__ = [
    "JSONL_KEEPALIVE",
    "SSE_KEEPALIVE",
    "EncodedEvent",
    "UnnamedEvent",
    "check_event_name",
    "check_sse_id",
    "encode_jsonl",
    "encode_sse",
    "sse_block",
    "unnamed_events",
]

SSE_KEEPALIVE: Final = b": keep-alive\n"
"""Keep-alive for SSE: a comment line, not followed by a blank line."""

JSONL_KEEPALIVE: Final = b'{"type":"keepalive"}\n'
"""Keep-alive for JSON lines."""


def check_sse_id(value: str, what: str = "id") -> str:
    """Refuse a value that would break out of an SSE ``id:`` line, as ``fastapi.sse`` does.

    Args:
        value: the id, or a part of it (a run id).
        what: its name in the error message. Default ``"id"``.

    Returns:
        ``value``, unchanged.

    Raises:
        ValueError: it holds a CR, an LF or a NUL.
    """
    if "\0" in value:
        raise ValueError(f"SSE {what!r} must not contain null characters")
    return check_event_name(value, what)


def check_event_name(value: str, what: str = "event") -> str:
    """Refuse a value that would break out of an SSE ``event:`` line (a CR or an LF).

    Raises:
        ValueError: it holds a CR or an LF.
    """
    if "\r" in value or "\n" in value:
        raise ValueError(f"SSE {what!r} must be a single line")
    return value


def sse_block(data: str, event: str | None, id: str, retry: int | None = None) -> bytes:
    """Encode one SSE block, byte-identical to ``format_sse_event(data_str=…, event=…, id=…)``.

    Args:
        data: the ``data:`` payload; must be a single line (compact JSON always is).
        event: the ``event:`` name, a single line; None leaves the line out (an unnamed
            event, which ``EventSource`` hands to ``onmessage``).
        id: the ``id:`` value; a single line without NUL.
        retry: reconnection delay in milliseconds for the ``retry:`` field, or None.

    Returns:
        The block, ending with the blank line that dispatches it.
    """
    head = "" if event is None else f"event: {event}\n"
    if retry is None:
        return f"{head}data: {data}\nid: {id}\n\n".encode()
    return f"{head}data: {data}\nid: {id}\nretry: {retry}\n\n".encode()


def encode_sse(state: RunState, *, retry: int | None = None, named: bool = True) -> bytes:
    """Encode a run state as one SSE block: ``event``, ``data`` (JSON), ``id`` (``run_id:seq``).

    Args:
        state: the event to encode.
        retry: reconnection delay in milliseconds to attach, or None.
        named: write the ``event:`` line. False leaves it out: the kind is then only in the
            JSON ``type``, and a browser ``EventSource`` calls ``onmessage`` for every event.
            Default True.

    Returns:
        UTF-8 bytes of the block.
    """
    return sse_block(state.to_json(), state.type.value if named else None, state.event_id, retry)


def encode_jsonl(state: RunState) -> bytes:
    """Encode a run state as one JSON line: compact JSON and a line feed."""
    return state.to_json().encode() + b"\n"


class EncodedEvent(Protocol):
    """An event as a run store keeps it (`StoredEvent`), ready to be written."""

    @property
    def sse(self) -> bytes:
        """The SSE block."""

    def sse_with_retry(self, retry: int) -> bytes:
        """The SSE block with a ``retry:`` field."""

    @property
    def jsonl(self) -> bytes:
        """The JSON line."""


class UnnamedEvent:
    """A stored event written without its ``event:`` line (the kind stays in ``type``).

    Args:
        event: the stored event to write.
    """

    __slots__ = ("event",)

    def __init__(self, event: StoredEvent) -> None:
        self.event = event

    @property
    def sse(self) -> bytes:
        """The SSE block: ``data`` and ``id``, no ``event``."""
        event = self.event
        return sse_block(event.data, None, f"{event.run_id}:{event.seq}")

    def sse_with_retry(self, retry: int) -> bytes:
        """The SSE block with a ``retry:`` field (milliseconds) added last."""
        event = self.event
        return sse_block(event.data, None, f"{event.run_id}:{event.seq}", retry)

    @property
    def jsonl(self) -> bytes:
        """The JSON line (the same as the named event's)."""
        return self.event.jsonl


def unnamed_events(batch: Sequence[StoredEvent]) -> list[UnnamedEvent]:
    """Wrap a batch of stored events so that they are written without ``event:`` lines."""
    return [UnnamedEvent(event) for event in batch]
