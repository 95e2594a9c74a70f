"""An app for the shutdown test, served with ``python -m uvicorn tests.apps.shutdown_app:app``.

Each run yields ``steps`` progress updates (a request parameter, default 100), one every
``STEP`` seconds. Every event the store receives is also written as a JSON line to the file
named by ``IKSTREAM_EVENT_LOG``, so the test can read how each run ended after the process
has exited.
"""

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI

from fastapi_ikstream import MemoryRunStore, RunState, create_router

STEP = 0.1
DRAIN_TIMEOUT = float(os.environ.get("IKSTREAM_DRAIN_TIMEOUT", "1.5"))


class LoggingStore(MemoryRunStore):
    """The memory store, writing every appended event to a JSON-lines file too."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def append(self, state: RunState) -> None:
        super().append(state)
        with open(self.path, "a", encoding="utf-8") as log:
            log.write(state.to_json() + "\n")


async def steps(inputs: Any, parameters: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
    total = int(parameters.get("steps", 100))
    for index in range(total):
        await asyncio.sleep(STEP)
        yield {"state": "STARTED", "progress": {"current": index + 1, "total": total}}
    yield {"results": [{"DATA_DICT": {"steps": total}}]}


app = FastAPI()
# Two routers, each with its own run manager: both must close their streams on SIGTERM.
for path in ("/slow", "/other"):
    app.include_router(
        create_router(
            steps,
            path=path,
            store=LoggingStore(os.environ["IKSTREAM_EVENT_LOG"]),
            on_disconnect="cancel",
            reconnect_grace=0.2,
            drain_timeout=DRAIN_TIMEOUT,
            retry=100,
        )
    )
