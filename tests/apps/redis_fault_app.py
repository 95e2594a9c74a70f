"""The Redis fault test's server: a long job on a Redis store (``IKSTREAM_TEST_REDIS_URL``).

Run in its own process, as a deployment would be, so that the test's 200 clients do not
share the server's interpreter.
"""

import asyncio
import logging
import os
from typing import Any

from fastapi import FastAPI

from fastapi_ikstream import Quotas, create_router
from fastapi_ikstream.redis import RedisRunStore

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

STREAMS = int(os.environ.get("IKSTREAM_TEST_STREAMS", "200"))


async def slow_job(inputs: Any, parameters: Any, on_progress: Any) -> list[dict[str, Any]]:
    """Reports progress every 50 ms for ``parameters["steps"]`` steps."""
    steps = int(parameters.get("steps", 2))
    for step in range(steps):
        on_progress(state="STARTED", progress={"current": step, "total": steps})
        await asyncio.sleep(0.05)
    return [{"DATA_DICT": {"steps": steps}}]


store = RedisRunStore(
    os.environ["IKSTREAM_TEST_REDIS_URL"],
    prefix=os.environ.get("IKSTREAM_TEST_REDIS_PREFIX", "fault:"),
)
quotas = Quotas(runs=STREAMS + 10, streams=STREAMS + 10)  # one anonymous caller, many runs
app = FastAPI()
app.include_router(create_router(slow_job, path="/job", store=store, keep_alive=1.0, quotas=quotas))
