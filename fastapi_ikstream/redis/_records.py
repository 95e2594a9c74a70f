"""What the Redis store keeps in memory and reads back: runs it writes, meta data, events."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._models import RunState
from .._store import StoredEvent

__all__ = [
    "LocalRun",
    "Meta",
    "Peek",
    "Pending",
    "events_of",
    "expire",
    "fields_of",
]

Pending = tuple[int, str, str, str]  # seq, type, data, status ("" for none)


@dataclass(slots=True)
class Meta:
    """A run's kept window and whether it ended."""

    first_seq: int
    last_seq: int
    finished: bool


@dataclass(slots=True)
class Peek:
    """A run's top seq, whether it ended, and whether its owner's lease is alive."""

    last_seq: int
    finished: bool
    lease_alive: bool


class LocalRun:
    """A run this worker created: its unwritten events and its writer's progress."""

    __slots__ = (
        "cancel_handled",
        "done",
        "ended_elsewhere",
        "pending",
        "top",
        "waiters",
        "written",
    )

    def __init__(self) -> None:
        self.pending: deque[Pending] = deque()
        self.top = 0
        self.written = 0
        self.done = False
        self.ended_elsewhere = False
        self.cancel_handled = False
        self.waiters: list[asyncio.Future[None]] = []

    def wake(self) -> None:
        """Resolve every pending `flush`."""
        waiters, self.waiters = self.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


def fields_of(state: RunState) -> Pending:
    """The quadruple the append script takes for one event."""
    status = state.status.value if state.status is not None else ""
    return (state.seq, state.type.value, state.to_json(), status)


def _pairs(fields: Any) -> dict[str, str]:
    if isinstance(fields, dict):
        return fields
    return dict(zip(fields[::2], fields[1::2], strict=True))


def events_of(run_id: str, entries: Sequence[Any]) -> list[StoredEvent]:
    """Stream entries (``XRANGE`` / ``XREAD``) as stored events; entry ids are the seqs."""
    events = []
    for entry_id, raw in entries:
        fields = _pairs(raw)
        seq = int(entry_id.partition("-")[0])
        events.append(StoredEvent(run_id, seq, fields["type"], fields["data"]))
    return events


def expire(fut: asyncio.Future[bool]) -> None:
    """Resolve a reader's wait as timed out."""
    if not fut.done():
        fut.set_result(False)
