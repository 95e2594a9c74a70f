"""Read an SSE stream over HTTP and keep what arrived: its bytes and its events."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Received:
    """What one connection received: the raw body and the events parsed from it."""

    body: bytes = b""
    events: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None
    ids: list[str] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        return [event["type"] for event in self.events]

    def feed(self, pending: bytes) -> bytes:
        """Parse the complete events in ``pending``; returns what is left of it."""
        while b"\n\n" in pending:
            block, pending = pending.split(b"\n\n", 1)
            data = [line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")]
            ids = [line[4:] for line in block.split(b"\n") if line.startswith(b"id: ")]
            if data:
                self.events.append(json.loads(b"\n".join(data)))
                self.ids.extend(raw.decode() for raw in ids)
        return pending


async def read_stream(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    stop_after: int | None = None,
    on_event: Any = None,
    **request: Any,
) -> Received:
    """Read the stream to its end, or close it after ``stop_after`` events (a client drop).

    ``on_event(received)`` is awaited after each event (to act mid-stream).
    """
    received = Received()
    pending = b""
    async with client.stream(method, url, **request) as response:
        assert response.status_code == 200, await response.aread()
        received.run_id = response.headers.get("x-run-id")
        async for chunk in response.aiter_raw():
            received.body += chunk
            seen = len(received.events)
            pending = received.feed(pending + chunk)
            for _ in range(seen, len(received.events)):
                if on_event is not None:
                    await on_event(received)
            if stop_after is not None and len(received.events) >= stop_after:
                break
    return received
