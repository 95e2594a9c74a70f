"""Graceful shutdown for every open stream of the process, router or plain route alike.

uvicorn waits for open connections to end before it runs the lifespan shutdown, so event
streams must hear of a SIGTERM (or SIGINT) when it arrives, not at lifespan end. This module
chains one handler per signal in front of the server's own (which still runs) and calls
every callback registered from any event loop, on that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["on_shutdown_signal"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_lock = threading.Lock()
_callbacks: dict[int, tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = {}
_next_key = 0


def _handler(signum: int, frame: FrameType | None) -> None:
    with _lock:
        callbacks = list(_callbacks.values())
    for loop, callback in callbacks:
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(callback)
    previous = _handler.previous.get(signum)  # type: ignore[attr-defined]
    if callable(previous):
        previous(signum, frame)


_handler.previous = {}  # type: ignore[attr-defined]


def _install() -> None:
    """Put the chaining handler in place (main thread only; again if someone replaced it)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in _SIGNALS:
        current: Any = signal.getsignal(sig)
        if current is _handler:
            continue
        _handler.previous[sig] = current  # type: ignore[attr-defined]
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(sig, _handler)


def on_shutdown_signal(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` on the running loop when SIGTERM or SIGINT arrives.

    Must be called from a running event loop. The process's previous handlers (uvicorn's)
    still run after the callbacks are scheduled. In a thread other than the main one (a
    ``TestClient``), signals cannot be hooked and the callback is only kept for the record.

    Returns:
        A function that unregisters the callback (safe to call more than once).
    """
    global _next_key
    loop = asyncio.get_running_loop()
    with _lock:
        key = _next_key
        _next_key += 1
        _callbacks[key] = (loop, callback)
    _install()

    def unregister() -> None:
        with _lock:
            _callbacks.pop(key, None)

    return unregister
