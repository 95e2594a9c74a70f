"""The GPU host of the chain tests (B): a slow generator behind a router.

Served in a thread by the tests, or as ``python -m uvicorn tests.apps.chain_upstream:app``
when a test kills it. ``make_app`` gives a fresh app and the list of its runs.
"""

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from fastapi_ikstream import Quotas, create_router

STEPS = 8


@dataclass
class Call:
    """One run of the slow generator: how it ended, and when (``time.monotonic``)."""

    parameters: dict[str, Any]
    finished: bool = False
    cancelled_at: float | None = None
    ended: threading.Event = field(default_factory=threading.Event)


def slow_generator(calls: list[Call]) -> Any:
    async def slow(inputs: Any, parameters: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        call = Call(dict(parameters))
        calls.append(call)
        delay = float(parameters.get("delay", 0.01))
        steps = int(parameters.get("steps", STEPS))
        try:
            yield {"state": "QUEUED", "eta": [100, 900]}
            for step in range(steps):
                await asyncio.sleep(delay)
                yield {
                    "state": "STARTED",
                    "eta": [10 * (steps - step), 20 * (steps - step)],
                    "progress": {"current": step + 1, "total": steps},
                }
                if step == steps // 2:
                    yield {"logs": [{"ts": 1763700000.5, "level": "INFO", "message": "halfway"}]}
            yield {"state": "STARTED", "partial_output": {"preview": [1, 2, 3]}}
            yield {"results": [{"DATA_DICT": {"steps": steps, "inputs": len(inputs)}}]}
            call.finished = True
        except asyncio.CancelledError:
            call.cancelled_at = time.monotonic()
            raise
        finally:
            call.ended.set()

    return slow


def make_app(**options: Any) -> tuple[FastAPI, list[Call]]:
    """B's app: the slow generator at ``/api/job``; router options pass through."""
    calls: list[Call] = []
    app = FastAPI()
    app.include_router(
        create_router(
            slow_generator(calls),
            path="/job",
            # its one caller (the edge server) resumes every cut: no per-caller resume budget
            **{"retry": 20, "quotas": Quotas(resumes=None), **options},
        ),
        prefix="/api",
    )
    return app, calls


app, CALLS = make_app()
