"""A plain ``StreamingRun(...).to_response()`` route, for the SIGTERM test.

``GET /run?steps=N`` streams N progress updates, one every ``STEP`` seconds.
"""

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from fastapi_ikstream import StreamingRun

STEP = 0.1
DRAIN_TIMEOUT = float(os.environ.get("IKSTREAM_DRAIN_TIMEOUT", "1.5"))

app = FastAPI()


async def steps(total: int) -> AsyncIterator[dict[str, Any]]:
    for index in range(total):
        await asyncio.sleep(STEP)
        yield {"state": "STARTED", "progress": {"current": index + 1, "total": total}}
    yield {"results": [{"DATA_DICT": {"steps": total}}]}


@app.get("/run")
async def run(steps_: int = 100) -> Any:
    return StreamingRun(steps(steps_), drain_timeout=DRAIN_TIMEOUT, retry=100).to_response()
