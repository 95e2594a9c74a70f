"""`StartOnce`: a start step that runs once, however many callers race to it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["StartOnce"]


class StartOnce:
    """Runs a start step once; callers that arrive while it runs wait for it to end.

    The lock is made on first use, so it belongs to the event loop that starts; after
    `reset`, a later use (another loop's, say) starts again. A start that raises leaves
    ``started`` False, so the next caller tries again.

    Attributes:
        started: the start step has run to its end (and no `reset` came since).
    """

    __slots__ = ("_lock", "started")

    def __init__(self) -> None:
        self.started = False
        self._lock: asyncio.Lock | None = None

    async def run(self, start: Callable[[], Awaitable[None]]) -> None:
        """Await ``start()`` unless a start has ended already or ends while waiting."""
        if self.started:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self.started:
                await start()
                self.started = True

    def reset(self) -> None:
        """Count as not started, with a new lock for the next start."""
        self.started = False
        self._lock = None
